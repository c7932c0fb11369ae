"""Cloud Monitoring distributions (google.api.Distribution): percentiles and merging. Pure: the
reader, the per-minute batch and the local Monitoring stand-in all compute a percentile here."""

from __future__ import annotations

from collections.abc import Sequence

from google.api import distribution_pb2

Distribution = distribution_pb2.Distribution


def bucket_bounds(options: Distribution.BucketOptions) -> list[float]:
    """The finite bucket boundaries b0 < b1 < ... < bN of a bucket layout.

    Bucket 0 is the underflow (-inf, b0), bucket i is [b(i-1), b(i)), bucket N+1 the overflow
    [bN, +inf): N+2 buckets in all (N+1 for explicit bounds, which list the boundaries).
    """
    kind = options.WhichOneof("options")
    if kind == "explicit_buckets":
        return list(options.explicit_buckets.bounds)
    if kind == "exponential_buckets":
        exp = options.exponential_buckets
        return [exp.scale * exp.growth_factor**i for i in range(exp.num_finite_buckets + 1)]
    if kind == "linear_buckets":
        lin = options.linear_buckets
        return [lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1)]
    raise ValueError("distribution has no bucket options")


def percentile(distribution: Distribution, q: float) -> float | None:
    """The q-th percentile (0..100) estimated from bucket counts; None for an empty distribution.

    As cloud.google.com/monitoring/api/v3/distribution-metrics describes: find the bucket that
    holds rank q% of the count and interpolate linearly between its bounds by the rank's place
    inside the bucket. The open-ended under/overflow buckets have one finite bound: use it (⚠ not
    documented).
    """
    if distribution.count == 0:
        return None
    bounds = bucket_bounds(distribution.bucket_options)
    rank = q / 100 * distribution.count
    below = 0
    for index, count in enumerate(distribution.bucket_counts):
        if count and below + count >= rank:
            if index == 0:
                return bounds[0]
            if index >= len(bounds):
                return bounds[-1]
            lower, upper = bounds[index - 1], bounds[index]
            return lower + (rank - below) / count * (upper - lower)
        below += count
    raise ValueError(f"bucket counts add up to {below}, not to the distribution count {distribution.count}")


def merge_distributions(distributions: Sequence[Distribution]) -> Distribution:
    """The sum of distributions with one bucket layout: what ALIGN_DELTA/REDUCE_SUM make of them."""
    parts = [d for d in distributions if d.count]
    if not parts:
        return Distribution()
    options = parts[0].bucket_options
    if any(d.bucket_options != options for d in parts):
        raise ValueError("cannot merge distributions with different bucket options")
    count = sum(d.count for d in parts)
    mean = sum(d.mean * d.count for d in parts) / count
    # Chan et al.: each part's squared deviation plus its mean's offset from the merged mean.
    deviation = sum(d.sum_of_squared_deviation + d.count * (d.mean - mean) ** 2 for d in parts)
    buckets = [0] * max(len(d.bucket_counts) for d in parts)
    for d in parts:
        for index, value in enumerate(d.bucket_counts):
            buckets[index] += value
    return Distribution(
        count=count,
        mean=mean,
        sum_of_squared_deviation=deviation,
        bucket_options=options,
        bucket_counts=buckets,
    )
