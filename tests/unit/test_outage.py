"""An outage counts while it is waited out, and stops counting when its waiter is gone."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from collector.backoff import Outage


def gauge() -> float:
    return REGISTRY.get_sample_value("registry_gc_unavailable", {"dependency": "test"}) or 0.0


def outages() -> float:
    return REGISTRY.get_sample_value("registry_gc_outages_total", {"dependency": "test"}) or 0.0


def test_an_outage_counts_once_until_it_is_over() -> None:
    outage = Outage("test")
    before, began = gauge(), outages()

    outage.failed(OSError("down"))
    outage.failed(OSError("still down"))
    assert (gauge(), Outage.available("test")) == (before + 1, False)
    assert outages() == began + 1  # one outage, however many failures

    assert outage.recovered() is True
    assert outage.recovered() is False
    assert (gauge(), Outage.available("test")) == (before, True)
    outage.failed(OSError("down again"))
    assert outages() == began + 2
    outage.recovered()


def test_an_outage_whose_waiter_is_gone_stops_counting() -> None:
    """A stage that stops during an outage leaves no outage behind in /readyz or the
    gauge (a loop's local Outage goes with the loop)."""
    before = gauge()
    outage = Outage("test")
    outage.failed(OSError("down"))
    assert not Outage.available("test")

    del outage
    gc.collect()

    assert (gauge(), Outage.available("test")) == (before, True)
