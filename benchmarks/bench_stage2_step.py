"""XBT stage-2 training-step throughput: LoRA on an open_clip NEW plus ψ, bf16 autocast on CUDA.

NEW is an open_clip architecture (default ``ViT-L-14``) with random weights, so nothing is
downloaded; LoRA adapters come from :func:`xbt_bench.models.lora.add_lora` and ψ is
:class:`xbt_bench.models.projection.Projection` (NEW's embedding -> OLD's ``--old-dim``, 512 as
ViT-B-32's). One step is what XBT's stage 2 runs: both towers forward through LoRA and ψ, the
stage-2 loss (InfoNCE image->anchor, text->anchor, image<->text, plus the cosine term), backward,
gradient clipping and a fused AdamW update of the adapters and ψ. Anchors are random unit vectors
(in a run they are read from a cache), images and tokens are random tensors already on the
device: the number measures the model step, not data loading.

Prints images/s, seconds per step and peak memory (GPU allocated and reserved on CUDA, process
peak RSS on CPU). Without CUDA it says so and runs the same step at a tiny size on the CPU.

    PYTHONPATH=. python benchmarks/bench_stage2_step.py                # CUDA: ViT-L-14, batch 64
    PYTHONPATH=. python benchmarks/bench_stage2_step.py --tiny          # any machine, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xbt_bench.losses import cosine_loss, info_nce
from xbt_bench.models.lora import add_lora, count_parameters
from xbt_bench.models.projection import Projection

# The same architecture family at a size a shared CPU runs in seconds.
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_RUN = {"batch": 8, "steps": 3, "warmup": 1}


class Stage2Encoder(nn.Module):
    """NEW with LoRA followed by ψ: the compatible query encoders φ_img and φ_txt."""

    def __init__(self, clip: nn.Module, psi: Projection) -> None:
        super().__init__()
        self.clip = clip
        self.psi = psi

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image_q = self.psi(F.normalize(self.clip.encode_image(images), dim=-1))
        text_q = self.psi(F.normalize(self.clip.encode_text(tokens), dim=-1))
        return image_q, text_q


def stage2_loss(
    image_q: torch.Tensor, text_q: torch.Tensor, anchors: torch.Tensor, tau: float = 0.05
) -> torch.Tensor:
    """XBT's stage-2 loss with surrogate anchors (docs/methods.md, XBT: the recipe)."""
    contrastive = info_nce(image_q, anchors, tau) + info_nce(text_q, anchors, tau)
    contrastive = contrastive + info_nce(image_q, text_q, tau)
    return contrastive + cosine_loss(text_q, anchors) + cosine_loss(image_q, anchors)


def build(args: argparse.Namespace, device: torch.device) -> tuple[Stage2Encoder, dict[str, Any]]:
    """The encoder under training and a description of it."""
    import open_clip

    overrides = TINY if args.tiny else {}
    clip = open_clip.create_model(args.model, **overrides)  # random weights: no download
    total = count_parameters(clip)
    clip = add_lora(clip, args.lora_towers, args.lora_rank)
    config = overrides or open_clip.get_model_config(args.model)
    psi = Projection(config["embed_dim"], args.old_dim)
    encoder = Stage2Encoder(clip, psi).to(device)
    info = {
        "model": args.model + (" (tiny config)" if args.tiny else ""),
        "new_params": total,
        "lora_params": count_parameters(clip, trainable_only=True),
        "psi_params": count_parameters(psi),
        "image_size": config["vision_cfg"]["image_size"],
        "context_length": config["text_cfg"]["context_length"],
        "vocab_size": config["text_cfg"]["vocab_size"],
    }
    return encoder, info


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, time ``args.steps`` steps; return the measurements."""
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    encoder, info = build(args, device)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1, fused=True)
    step_fn = torch.compile(encoder) if args.compile else encoder
    size, length = info["image_size"], info["context_length"]
    images = torch.randn(args.batch, 3, size, size, device=device)
    tokens = torch.randint(1, info["vocab_size"], (args.batch, length), device=device)
    anchors = F.normalize(torch.randn(args.batch, args.old_dim, device=device), dim=-1)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = stage2_loss(*step_fn(images, tokens), anchors)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return loss.detach()

    encoder.train()
    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {
        **info,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "precision": "bf16-autocast" if cuda else "fp32",
        "compiled": args.compile,
        "batch": args.batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "warmup_s": round(warmup_s, 2),
        "step_s": round(seconds / args.steps, 4),
        "images_per_s": round(args.batch * args.steps / seconds, 1),
        "final_loss": round(float(losses[-1]), 4),
        "torch": torch.__version__,
    }
    if cuda:
        result["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def report(result: dict[str, Any]) -> str:
    """The measurements as a few readable lines."""
    trainable = result["lora_params"] + result["psi_params"]
    lines = [
        f"device: {result['device']} ({result['precision']}, torch {result['torch']}"
        + (", torch.compile" if result["compiled"] else "")
        + ")",
        f"NEW: {result['model']}, random weights, {result['new_params'] / 1e6:.1f}M parameters; "
        f"trainable: LoRA {result['lora_params'] / 1e6:.2f}M + psi "
        f"{result['psi_params'] / 1e6:.2f}M = {100 * trainable / result['new_params']:.2f}% of NEW",
        f"batch {result['batch']}, {result['steps']} timed steps after {result['warmup_steps']} "
        f"warm-up ({result['warmup_s']}s): {result['step_s']} s/step, "
        f"{result['images_per_s']} images/s (image-text pairs/s), final loss "
        f"{result['final_loss']}",
    ]
    if "peak_gpu_allocated_gib" in result:
        lines.append(
            f"peak GPU memory: {result['peak_gpu_allocated_gib']} GiB allocated, "
            f"{result['peak_gpu_reserved_gib']} GiB reserved"
        )
    lines.append(f"peak process RSS: {result['peak_rss_gib']} GiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, pick the device, run and print; return the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-L-14", help="open_clip architecture of NEW")
    parser.add_argument("--old-dim", type=int, default=512, help="OLD's embedding dimension")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-towers", default="both", choices=("image", "text", "both"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="a tiny config of the architecture")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or args.device == "cpu":
        why = "CUDA is not available" if not torch.cuda.is_available() else "--device cpu"
        print(f"{why}: running the stage-2 step benchmark at a tiny size on the CPU", flush=True)
        args.tiny = True
        for name, value in TINY_RUN.items():
            setattr(args, name, min(getattr(args, name), value))
    result = run(args)
    print(report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
