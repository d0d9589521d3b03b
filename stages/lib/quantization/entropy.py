"""Entropy (KL) calibration: ONNX Runtime's threshold search, with numpy sums.

For each activation, the search tries every symmetric threshold of an ENTROPY_BINS-bin histogram (961
candidates) for the one whose 128-level quantization loses least (TensorRT's recipe). ORT's
HistogramCollector.get_entropy_threshold sums bins with Python's builtin `sum`, one element at a time: ~57 s for
Lite0's 97 activations on this VM, whatever the image size. `kl_threshold` is the same search with numpy sums:
the histogram holds integer counts, whose sums are exact in any order, and the smoothing and the KL divergence
are ORT's own functions called on the same arrays, so it returns the same thresholds (tests/test_recipes.py
compares them with ORT's on real histograms) in a fraction of the time. A histogram of float counts goes to
ORT's own search, where the order of the sums could matter.
"""

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator, entropy
from onnxruntime.quantization.quant_utils import smooth_distribution

# quantize_static builds its entropy calibrator with num_bins = num_quantized_bins = 128, which leaves one
# candidate, the full range: minmax under another name (byte-identical models, measured). So entropy ranges are
# computed here, on a finer histogram.
ENTROPY_BINS = 2048
QUANTIZED_BINS = 128


def entropy_ranges(model_path, reader, op_types, scratch):
    """Activation ranges (ORT's TensorsData) by KL-divergence threshold search on an ENTROPY_BINS-bin histogram."""
    calibrator = create_calibrator(
        Path(model_path),
        op_types,
        augmented_model_path=Path(scratch) / "augmented.onnx",
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    collector = calibrator.collector
    ort_search = collector.get_entropy_threshold
    collector.get_entropy_threshold = lambda histogram, n: kl_threshold(histogram, n, ort_search)
    return calibrator.compute_data()


def kl_threshold(histogram, num_quantized_bins, ort_search):
    """(low, high) of the least-KL symmetric threshold: ORT's get_entropy_threshold, step for step.

    `histogram` is ORT's (counts, edges, min, max, ...); `ort_search` is ORT's method, used for float counts."""
    hist, edges, lowest, highest = histogram[:4]
    if not np.issubdtype(hist.dtype, np.integer):
        return ort_search(histogram, num_quantized_bins)
    num_bins, dtype = hist.size, edges.dtype
    zero, half = num_bins // 2, num_quantized_bins // 2
    below = np.concatenate([[0], np.cumsum(hist)])  # below[k] = hist[:k].sum(), exact for integers
    kl = np.zeros(zero - half + 1)
    thresholds = []
    for k, i in enumerate(range(half, zero + 1)):
        start, end = zero - i, min(zero + i + 1, num_bins)
        thresholds.append((edges[start], edges[end]))
        sliced = hist[start:end]
        p = sliced.copy()  # the reference: outliers folded into the edge bins
        p[0] += below[start]
        p[-1] += below[-1] - below[end]
        merged = sliced.size // num_quantized_bins
        cut = num_quantized_bins * merged
        quantized = sliced[:cut].reshape(num_quantized_bins, merged).sum(1)
        quantized[-1] += sliced[cut:].sum()
        nonzero = (p[:cut] != 0).reshape(num_quantized_bins, merged).sum(1)
        q = np.zeros(p.size, dtype=np.int64)  # the candidate: each level spread over its non-empty bins
        with np.errstate(divide="ignore", invalid="ignore"):
            q[:cut] = np.repeat(np.where(nonzero != 0, quantized / nonzero, 0), merged)  # truncated, as ORT's
        p, q = smooth_distribution(p), smooth_distribution(q)
        kl[k] = np.array(np.inf if p is None or q is None else entropy(p, q), dtype=dtype)
    low, high = thresholds[np.argmin(kl)]
    return (lowest if low < lowest else low), (highest if high > highest else high)
