"""`events` is a distribution of its own: installed alone in a clean virtual environment
(pydantic its only dependency), it reads what the collector publishes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from events import BlobRemoved, rejection_event, removal_event, to_record

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.util, json, sys
from events import RequestRejected, decode_event, removal_of
removal_value, letter_value = (open(path, "rb").read() for path in sys.argv[1:3])
removal = removal_of(decode_event(removal_value))
letter = RequestRejected.model_validate(decode_event(letter_value).data)
print(json.dumps({
    "removal": type(removal).__name__,
    "digest": removal.digest,
    "reason": letter.reason,
    "absent": [name for name in ("collector", "asyncpg", "aiokafka")
               if importlib.util.find_spec(name) is None],
}))
"""


def test_events_installs_alone_and_reads_a_removal_and_a_dead_letter(tmp_path: Path) -> None:
    removal = removal_event(
        BlobRemoved(blob_id=1, digest="sha256:" + "a" * 64, size=10, locations=["local"]),
        causation_id="request-1",
    )
    letter = rejection_event(
        reason="malformed-json",
        detail="not JSON",
        topic="registry.gc.requests",
        partition=0,
        offset=7,
        key=b"acme/web",
        value=b"{",
    )
    (tmp_path / "removal").write_bytes(to_record(removal)[0])
    (tmp_path / "letter").write_bytes(to_record(letter)[0])
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]

    subprocess.run([*install, str(ROOT / "events")], check=True, timeout=600)
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = subprocess.run(
        [python, "-c", PROBE, str(tmp_path / "removal"), str(tmp_path / "letter")],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: its folders are not on the path
    )

    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert installed - {"pip", "setuptools"} == {
        "registry-gc-events",
        "pydantic",
        "pydantic-core",
        "annotated-types",
        "typing-extensions",
        "typing-inspection",
    }
    assert json.loads(probe.stdout) == {
        "removal": "BlobRemoved",
        "digest": "sha256:" + "a" * 64,
        "reason": "malformed-json",
        "absent": ["collector", "asyncpg", "aiokafka"],
    }
