"""2:4 masks on the distilled student's weights, then per-layer fp16 GEMM time dense vs semi-structured sparse."""

import json
import sys

from stages.lib import models, sparsity

model, card = models.load(sys.argv[1])
sparsity.apply_masks(sparsity.semi_structured_masks(model))
sparsity.make_permanent(model)
out = {"model": card["arch"], "source": sys.argv[1]}
for tokens in (256, 4096, 16384):
    out[f"tokens_{tokens}"] = sparsity.time_semi_structured(model, tokens=tokens)
json.dump(out, open(sys.argv[2], "w"), indent=2)
print(
    json.dumps(
        {
            k: {kk: vv for kk, vv in v.items() if kk not in ("layers", "layers_skipped")} if isinstance(v, dict) else v
            for k, v in out.items()
        },
        indent=1,
    )
)
