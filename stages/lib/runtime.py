"""Run any variant the same way: float32 NCHW images in [0, 1] -> logits, on CPU or GPU.

torch is imported only for PyTorch variants, so a process that benchmarks an ONNX
Runtime variant holds ORT's memory alone, as it would in deployment.
"""

import numpy as np

RUNTIMES = ("torch", "onnxruntime")


class TorchRunner:
    def __init__(self, path, threads, device="cpu"):
        import torch

        from stages.lib import models

        torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        self.model, self.card = models.load(path)
        self.model.to(device)
        self.param_count = models.param_count(self.model)

    def __call__(self, x):
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(x).to(self.device))
            if self.device != "cpu":
                self.torch.cuda.synchronize()
            return out.float().cpu().numpy()


class OrtRunner:
    def __init__(self, path, threads, device="cpu"):
        import onnx
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        # Weights only: quantization scales and zero points are bookkeeping, not parameters.
        graph = onnx.load(str(path), load_external_data=False).graph
        self.param_count = sum(
            int(np.prod(t.dims)) for t in graph.initializer if not t.name.endswith(("_scale", "_zero_point"))
        )

    def __call__(self, x):
        return self.session.run(None, {self.input: x})[0]


def load_runner(path, runtime, threads, device="cpu"):
    cls = {"torch": TorchRunner, "onnxruntime": OrtRunner}[runtime]
    return cls(path, threads, device)


def gpu_available(runtime):
    if runtime == "torch":
        import torch

        return torch.cuda.is_available()
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def softmax(logits):
    """Class probabilities, computed stably in float64."""
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def predict(runner, x_float, batch_size=64):
    """Class probabilities (N, num_classes) for float images in [0, 1]."""
    return np.concatenate([softmax(runner(x_float[i : i + batch_size])) for i in range(0, len(x_float), batch_size)])
