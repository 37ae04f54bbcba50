#!/usr/bin/env python3
"""PyTorch eager baseline of one scaffold-cpp training step.

Builds the same 3D U-Net as src/nn/unet.cpp (base width 64, DoubleConv =
two [3x3x3 convolution without bias, GroupNorm, ReLU], max-pooling down,
ConvTranspose3d(k=2, s=2) up with the skip connection first in the
concatenation, 1x1x1 output convolution, depth = problem_scale - 3), the same
loss as src/train/loss.cpp (class-weighted cross-entropy plus 1 - soft Dice
over the foreground classes) and the same optimizer step (Adam, lr 1e-3,
gradient norm clipped at 1.0). Runs bf16 autocast on CUDA (float32 on CPU,
as the C++ trainer does) with channels_last_3d activations and weights, and
prints the median step time, samples per second and peak memory as one line
of key=value pairs.

The input is random noise and the mask random class ids: the step time does
not depend on the values.

Examples:
  python3 bench/pytorch_baseline.py --scale 7 --batch 1
  python3 bench/pytorch_baseline.py --device cpu --scale 4 --steps 2 --warmup 0
  python3 bench/pytorch_baseline.py --check-params
"""

import argparse
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

BASE_WIDTH = 64
IN_CHANNELS = 3
BOTTLENECK_DIM = 3  # unet_layers = problem_scale - unet_bottleneck_dim
DICE_SMOOTH = 1e-6

# scaffold::count_parameters of the C++ U-Net at problem scale 7 (4 levels)
# with 6 classes and 8 GroupNorm groups.
CPP_PARAMETERS_SCALE7_CLASSES6 = 90_302_342


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels, eps=1e-5),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels, eps=1e-5),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool3d(2), DoubleConv(in_channels, out_channels, groups))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels, groups)

    def forward(self, deep, skip):
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels, n_classes):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, n_classes, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):
    """`layers` Down blocks of widths 64, 128, ..., 64 * 2^layers and as many Up blocks."""

    def __init__(self, n_classes, layers, groups=8):
        super().__init__()
        self.layers = layers
        self.inc = DoubleConv(IN_CHANNELS, BASE_WIDTH, groups)
        for i in range(layers):
            width = BASE_WIDTH << i
            setattr(self, f"down{i + 1}", Down(width, 2 * width, groups))
        for i in range(layers):
            deep_width = BASE_WIDTH << (layers - i)
            setattr(self, f"up{i + 1}", Up(deep_width, deep_width // 2, groups))
        self.outc = OutConv(BASE_WIDTH, n_classes)

    def forward(self, x):
        skips = []
        h = self.inc(x)
        for i in range(self.layers):
            skips.append(h)
            h = getattr(self, f"down{i + 1}")(h)
        for i in range(self.layers):
            h = getattr(self, f"up{i + 1}")(h, skips[self.layers - 1 - i])
        return self.outc(h)


def segmentation_loss(logits, target, class_weights):
    """Weighted cross-entropy + (1 - soft Dice over the foreground classes), in float32."""
    n, n_classes = logits.shape[:2]
    log_probs = F.log_softmax(logits.float(), dim=1)
    true_log_probs = log_probs.gather(1, target.unsqueeze(1)).reshape(-1)

    voxel_weights = class_weights[target.reshape(-1)]
    eps = torch.finfo(torch.float32).eps
    ce = -(voxel_weights * true_log_probs).sum() / voxel_weights.sum().clamp_min(eps)

    # Soft Dice per (sample, class): I = 2 sum(p g), S = sum(p) + sum(g), S := I where S == 0.
    probs = log_probs.exp()
    prob_sums = probs.sum(dim=(2, 3, 4))
    ids = target.reshape(n, -1) + torch.arange(n, device=target.device).unsqueeze(1) * n_classes
    target_counts = torch.bincount(ids.reshape(-1), minlength=n * n_classes).view(n, n_classes).to(probs.dtype)
    true_probs = probs.gather(1, target.unsqueeze(1)).reshape(n, -1)
    intersections = torch.zeros(n, n_classes, device=probs.device, dtype=probs.dtype)
    intersections = intersections.scatter_add(1, target.reshape(n, -1), true_probs)
    intersection_x2 = 2 * intersections
    total = prob_sums + target_counts
    denominator = torch.where(total == 0, intersection_x2, total)
    dice = (intersection_x2 + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    soft_dice = dice[:, 1:].mean(dim=1).mean()
    return ce + (1 - soft_dice)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=7, help="problem scale: volume edge 2^scale voxels (default 7)")
    parser.add_argument("--batch", type=int, default=1, help="volumes per step (default 1)")
    parser.add_argument("--classes", type=int, default=6, help="output classes incl. background (default 6)")
    parser.add_argument("--groups", type=int, default=8, help="GroupNorm groups (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (default 5)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--fp32", action="store_true", help="run without bf16 autocast on CUDA (CPU always runs float32)")
    parser.add_argument("--contiguous", action="store_true", help="keep NCDHW layout instead of channels_last_3d")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="leave cudnn.benchmark off")
    parser.add_argument(
        "--check-params",
        action="store_true",
        help=f"only check that scale 7 with 6 classes has the C++ model's {CPP_PARAMETERS_SCALE7_CLASSES6:,} parameters",
    )
    args = parser.parse_args(argv)
    if args.scale <= BOTTLENECK_DIM:
        parser.error(f"--scale must be above {BOTTLENECK_DIM} so the U-Net has at least one level")
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch and --steps must be at least 1 and --warmup at least 0")
    return args


def check_parameters():
    model = UNet(n_classes=6, layers=7 - BOTTLENECK_DIM, groups=8)
    count = count_parameters(model)
    if count != CPP_PARAMETERS_SCALE7_CLASSES6:
        print(
            f"parameter check failed: scale 7 with 6 classes has {count:,} parameters, "
            f"the C++ U-Net has {CPP_PARAMETERS_SCALE7_CLASSES6:,}",
            file=sys.stderr,
        )
        return 1
    print(f"parameter check passed: {count:,} parameters at scale 7 with 6 classes, as in the C++ U-Net")
    return 0


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv):
    args = parse_args(argv)
    if args.check_params:
        return check_parameters()

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("pytorch_baseline: torch sees no CUDA device. Use --device cpu", file=sys.stderr)
            return 1
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    memory_format = torch.contiguous_format if args.contiguous else torch.channels_last_3d
    layers = args.scale - BOTTLENECK_DIM
    edge = 2**args.scale

    torch.manual_seed(0)
    use_amp = device.type == "cuda" and not args.fp32
    model = UNet(args.classes, layers, args.groups).to(device=device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    volume = torch.randn(args.batch, IN_CHANNELS, edge, edge, edge, device=device)
    volume = volume.contiguous(memory_format=memory_format)
    mask = torch.randint(0, args.classes, (args.batch, edge, edge, edge), device=device)
    class_weights = torch.ones(args.classes, device=device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = []
    loss = None
    for step in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(volume)
            loss = segmentation_loss(logits, mask, class_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        synchronize(device)
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - start)

    median_s = statistics.median(step_seconds)
    print(
        f"pytorch_baseline torch={torch.__version__} device={device} scale={args.scale} edge={edge} "
        f"layers={layers} batch={args.batch} params={count_parameters(model)} "
        f"amp={'bf16' if use_amp else 'off'} layout={'ncdhw' if args.contiguous else 'channels_last_3d'} "
        f"steps={args.steps} median_step_s={median_s:.4f} min_step_s={min(step_seconds):.4f} "
        f"samples_per_s={args.batch / median_s:.2f} peak_memory_gib={peak_memory_gib(device):.2f} "
        f"last_loss={loss.item():.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
