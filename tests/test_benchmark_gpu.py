"""The benchmark's GPU path (lib/runtime/gpu, gpu_rounds): on CPU the same code runs with device="cpu", graph
capture and torch.compile skipped with their reason; the last test needs a CUDA device and skips without one."""

import logging

import pandas as pd
import pytest

from stages.lib import errors, models
from stages.lib.runtime import gpu, gpu_rounds

SIZE = 32
B = {"seconds": 0.02, "min_calls": 3, "warmup": 1}  # the benchmark section's time box, kept tiny
K = {"gpu_rounds": 2, "gpu_batches": [1, 3], "gpu_dtypes": ["float32", "float16"], "gpu_compile": ["tiny_torch"]}
NO_ORT_GPU = {"device": {"name": "cpu"}, "ort_providers": ["CPUExecutionProvider"]}


def cuda_available():
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    """A saved model.pt of timm's tiniest EfficientNet (100k parameters): the GPU path's real code, cheap on CPU."""
    folder = tmp_path_factory.mktemp("tiny_torch")
    model = models.build("test_efficientnet", 2).eval()
    models.save(folder, model, models.make_card("test_efficientnet", "none", SIZE, model, ["good", "defect"]))
    return {"model": str(folder / "model.pt"), "runtime": "torch"}


def test_the_gpu_path_runs_on_cpu_with_graph_and_compile_skipped(variant):
    res = gpu_rounds.worker(variant, SIZE, B, K, compiled=True, device="cpu")
    assert res["b1_mode"] == "host to host, eager (no CUDA graph)"
    assert res["compiled"] == {"skipped": gpu.NO_CUDA}
    assert set(res["dtypes"]) == {"float32", "float16"}
    for d in res["dtypes"].values():
        assert d["latency_ms_p50"] > 0 and d["calls"] >= B["min_calls"] and d["peak_gpu_mem_mb"] is None
    assert res["dtypes"]["float32"]["logit_max_abs_diff"] < 1e-4  # the same model, the same image, FP32
    assert res["sweep"]["mode"] == "eager" and res["sweep"]["dtype"] == "float16"
    assert set(res["sweep"]["throughput_img_s"]) == {"1", "3"}
    assert all(v > 0 for v in res["sweep"]["throughput_img_s"].values())


def test_rounds_give_tidy_rows_and_a_gpu_dict_per_variant(variant):
    variants = {"tiny_torch": variant, "tiny_pt2e": {"model": "unused.pt2", "runtime": "torch_pt2e"}}
    rows, results = gpu_rounds.run_rounds(variants, SIZE, B, K, seed=0, found=NO_ORT_GPU, device="cpu")
    assert sorted(rows["round"].unique()) == [1, 2]
    assert set(rows["threads"]) == {"gpu_float32", "gpu_float16"}
    assert rows.loc[rows["threads"] == "gpu_float32", "throughput_img_s_b1"].isna().all()  # the sweep is FP16's

    out = gpu_rounds.summary(rows, results, {"name": "cpu"})
    assert out["tiny_pt2e"] == {"skipped": "runtime torch_pt2e: a CPU-only program (X86 Inductor INT8)"}
    g = out["tiny_torch"]
    fp16 = rows[rows["threads"] == "gpu_float16"]
    assert g["device"] == "cpu" and g["dtype"] == "float16"
    assert g["latency_ms_p50_b1"] == round(float(fp16["latency_ms_p50"].median()), 4)
    assert len(g["latency_ms_p50_b1_ci95"]) == 2 and g["latency_ms_p50_b1_cov_pct"] >= 0
    assert set(g["latency_ms_p50_b1_by_dtype"]) == {"float32", "float16"}
    assert set(g["throughput_img_s"]) == {"1", "3"}
    assert g["throughput_img_s"]["3"] == round(float(fp16["throughput_img_s_b3"].median()), 1)
    assert g["compile_skipped"] == gpu.NO_CUDA and "throughput_img_s_compiled" not in g
    assert g["peak_gpu_mem_mb"] is None and "failed" not in g
    assert gpu_rounds.headline(g).startswith("float16 b1 p50 ")


def test_the_phase_logs_and_assembles_on_the_fake_device(variant, caplog):
    """What benchmark.main adds where a GPU ran, end to end on device="cpu" (the log line and estimate included)."""
    caplog.set_level(logging.INFO)
    k = {**K, "gpu_rounds": 1, "gpu_compile": ["tiny_torch", "not_a_variant"]}
    rows, out, run = gpu_rounds.phase(
        {"tiny_torch": variant}, SIZE, 0, B, k, {"gpus": ["fake"]}, False, logging.getLogger("t"), device="cpu"
    )
    assert run == {"device": {"name": "cpu", "driver": None, "cuda": None}, **k}
    assert list(rows["round"].unique()) == [1] and set(out) == {"tiny_torch"}
    assert "latency_ms_p50_b1_cov_pct" not in out["tiny_torch"]  # one round: no spread to state
    assert "not_a_variant" in caplog.text and "1 variants x 1 rounds" in caplog.text


def test_rounds_csv_rows_read_back_next_to_cpu_rows():
    """CPU rows have integer thread counts, GPU rows `gpu_<dtype>`: the report compares them as strings."""
    cpu = pd.DataFrame([{"round": 1, "position": 0, "variant": "a", "threads": 2, "latency_ms_p50": 1.0}])
    res = {"dtypes": {"float16": {"latency_ms_p50": 0.5}}, "sweep": {"dtype": "float16", "throughput_img_s": {"8": 9}}}
    both = pd.concat([cpu, pd.DataFrame(gpu_rounds.round_rows(res, 1, 0, "a"))], ignore_index=True)
    assert list(both["threads"].astype(str)) == ["2", "gpu_float16"]
    assert both.loc[1, "throughput_img_s_b8"] == 9


def test_knobs_default_and_refuse_bad_values():
    assert gpu_rounds.knobs({}) == gpu_rounds.DEFAULTS
    assert gpu_rounds.knobs({"gpu_rounds": 1})["gpu_rounds"] == 1
    with pytest.raises(errors.ParamError, match=r"benchmark\.gpu_batches\[\]=0"):
        gpu_rounds.knobs({"gpu_batches": [1, 0]})
    with pytest.raises(errors.ParamError, match=r"benchmark\.gpu_dtypes\[\]='int8'"):
        gpu_rounds.knobs({"gpu_dtypes": ["float16", "int8"]})
    with pytest.raises(errors.ParamError, match="expected 'float16' among the dtypes"):
        gpu_rounds.knobs({"gpu_dtypes": ["float32"]})


def test_variants_without_a_gpu_runtime_are_skipped_with_their_reason():
    assert gpu_rounds.unrunnable({"runtime": "torch"}, NO_ORT_GPU) is None
    ort = gpu_rounds.unrunnable({"runtime": "onnxruntime"}, NO_ORT_GPU)
    assert ort == "onnxruntime-gpu not installed (providers: CPUExecutionProvider)"
    with_cuda = {**NO_ORT_GPU, "ort_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    assert gpu_rounds.unrunnable({"runtime": "onnxruntime"}, with_cuda) is None


def test_no_gpu_in_the_fingerprint_starts_nothing():
    """A CPU machine's benchmark is what it was: no probe, no process, no gpu keys (the model path is never read)."""
    missing = {"v": {"model": "does/not/exist.pt", "runtime": "torch"}}
    assert gpu_rounds.phase(missing, SIZE, 0, B, K, {"gpus": []}, False, log=None) == (None, {}, None)


@pytest.mark.skipif(cuda_available(), reason="this machine has a CUDA device: the refusal is for machines without")
def test_gpu_only_without_cuda_is_a_one_line_error():
    with pytest.raises(errors.UserError, match=r"^--gpu-only: no CUDA device"):
        gpu_rounds.phase({}, SIZE, 0, B, K, {"gpus": []}, True, log=None)


def test_graph_capture_and_compile_on_a_gpu(variant):
    if not cuda_available():
        pytest.skip(gpu.NO_CUDA)
    k = {**K, "gpu_dtypes": ["float32", "float16", "bfloat16"], "gpu_batches": [1, 8]}
    res = gpu_rounds.worker(variant, SIZE, B, k, compiled=True, device="cuda")
    assert res["b1_mode"] == "host to host, CUDA graph replay" and res["device"]["driver"]
    for dtype, d in res["dtypes"].items():
        assert "skipped" not in d, (dtype, d)
        assert d["peak_gpu_mem_mb"] > 0
        assert d["logit_max_abs_diff"] < (1e-3 if dtype == "float32" else 0.5)  # the graph computes the same logits
    assert res["sweep"]["mode"] == "cuda_graph" and set(res["sweep"]["throughput_img_s"]) == {"1", "8"}
    assert set(res["compiled"]["compile_s"]) == {"1", "8"} and all(s > 0 for s in res["compiled"]["compile_s"].values())
    assert all(v > 0 for v in res["compiled"]["throughput_img_s"].values())
    blocks = [*res["dtypes"].values(), res["sweep"], res["compiled"]]
    assert res["peak_gpu_mem_mb"] == max(v for b in blocks for v in gpu.by_block(b["peak_gpu_mem_mb"]))
    assert all(v > 0 for v in res["compiled"]["peak_gpu_mem_mb"].values())
