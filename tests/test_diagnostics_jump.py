"""Bucket diagnostics over long gaps: the core and the reference skip a run of empty
buckets at once, and must report exactly what the literal one-bucket-at-a-time window of
spec §2.2 reports (which would take hours for a gap of years)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from adjobs import _core
from adjobs import _reference as ref


class LiteralWindow:
    """Spec §2.1-2.4 step by step with its ring of W counts and no shortcuts: the oracle
    for small gaps."""

    def __init__(self, span: int, latency: int) -> None:
        self.span = span
        self.capacity = max(-(-latency // span), 10)
        self.ring = [0] * self.capacity
        self.latest: int | None = None
        self.earliest = 0
        self.moving = 0
        self.last_flushed = -1
        self.totals = [0, 0, 0]
        self.latest_empty: int | None = None

    def slot(self, bucket: int) -> int:
        return bucket // self.span % self.capacity

    def add(self, time_ms: int) -> None:
        bucket = time_ms // self.span * self.span
        if self.latest is None:
            self.latest = self.earliest = bucket
        while bucket > self.latest:
            following = self.latest + self.span
            if self.slot(following) == self.slot(self.earliest):  # the ring is full
                count = self.ring[self.slot(self.earliest)]
                self.report(self.earliest, count)
                self.moving -= count
                self.earliest += self.span
            self.ring[self.slot(following)] = 0
            self.latest = following
        self.ring[self.slot(bucket)] += 1
        self.moving += 1
        self.earliest = min(self.earliest, bucket)

    def report(self, bucket: int, count: int) -> None:
        if bucket <= self.last_flushed:
            return
        self.last_flushed = bucket
        self.totals[0] += 1
        if count == 0:
            self.totals[1] += 1
            if bucket > 0:
                self.latest_empty = bucket
        else:
            size = (self.latest - self.earliest) // self.span + 1
            if math.log(self.moving / size) - math.log(count) > 2.0:
                self.totals[2] += 1

    def flush(self) -> None:
        if self.latest is not None:
            for bucket in range(self.earliest, self.latest, self.span):
                self.report(bucket, self.ring[self.slot(bucket)])


SPAN = 1000

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-3, 30)),       # near the current bucket
        st.tuples(st.just("jump"), st.integers(-40, 3000)),   # a gap of up to 3000 buckets
        st.tuples(st.just("flush"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, latency_buckets=st.sampled_from([0, 3, 12, 25]), start=st.integers(-50, 50))
def test_skipping_empty_runs_reports_what_the_literal_window_reports(
        steps, latency_buckets, start):
    latency = latency_buckets * SPAN
    oracle = LiteralWindow(SPAN, latency)
    core = _core.BucketDiagnostics(SPAN, latency)
    reference = ref.BucketDiagnostics(SPAN, latency)
    core_totals = [0, 0, 0]
    reference_totals = [0, 0, 0]
    time_ms = start * SPAN
    for kind, amount in steps:
        if kind == "flush":
            for window in (oracle, core, reference):
                window.flush()
        else:
            time_ms += amount * SPAN + (amount % 7) * 10
            for window in (oracle, core, reference):
                window.add(time_ms)
        for window, totals in ((core, core_totals), (reference, reference_totals)):
            for i, value in enumerate(window.take_counts()):
                totals[i] += value
        assert core_totals == oracle.totals
        assert reference_totals == oracle.totals
        assert core.latest_empty_bucket_ms == oracle.latest_empty
        assert reference.latest_empty_bucket_ms == oracle.latest_empty


def test_a_gap_of_eight_thousand_years_is_counted_not_walked():
    # 1 s buckets from 1970 to year 9999: 2.5e11 buckets, hours at one step per bucket.
    last = 253_402_300_799_000
    for diagnostics in (_core.BucketDiagnostics(1000, 0), ref.BucketDiagnostics(1000, 0)):
        diagnostics.add(1000)
        diagnostics.add(last)
        diagnostics.flush()
        # Every bucket from 1000 up to the last one's is reported: 1000 holds a record,
        # the rest are empty.
        buckets = (last - 1000) // 1000
        assert diagnostics.take_counts() == (buckets, buckets - 1, 0)
        assert diagnostics.latest_empty_bucket_ms == last - 1000
