"""StyleGAN3 (Karras et al., "Alias-Free Generative Adversarial Networks", NeurIPS 2021), configs T and R,
in pure PyTorch, with NVIDIA's module and parameter names.

Fourier-feature input with a learned rotation/translation, modulated convolutions with input
gain from the magnitude EMA, and filtered leaky ReLU (upsample by the layer's factor, nonlinearity,
low-pass and downsample) with Kaiser (T) or radial jinc (R) filters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.signal
import scipy.special
import torch
from torch import nn

from pipeline.generators.base import Generator
from pipeline.generators.layers import FullyConnectedLayer, truncate_ws
from pipeline.generators.ops import SQRT2, as_pair, filtered_lrelu

TRAINING_ONLY = {"magnitude_ema_beta"}


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 2,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.998):  # fmt: skip
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        self.embed = FullyConnectedLayer(c_dim, w_dim, scale_bias_init=True) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx in range(num_layers):
            fc = FullyConnectedLayer(
                features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier, scale_bias_init=True
            )
            setattr(self, f"fc{idx}", fc)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, **_: Any) -> torch.Tensor:  # fmt: skip
        x = z.to(torch.float32)
        x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        if self.c_dim > 0:
            y = self.embed(c.to(torch.float32))
            y = y * (y.square().mean(1, keepdim=True) + 1e-8).rsqrt()
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        return truncate_ws(
            x, self.w_avg, truncation_psi, self.num_ws if truncation_cutoff is None else truncation_cutoff
        )


def modulated_conv2d(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, demodulate: bool = True,
                     padding: int = 0, input_gain: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """StyleGAN3's modulated conv: weights and styles pre-normalised, then one grouped convolution."""
    batch = int(x.shape[0])
    _, in_channels, kh, kw = w.shape
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()
    w = w.unsqueeze(0) * s.unsqueeze(1).unsqueeze(3).unsqueeze(4)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * dcoefs.unsqueeze(2).unsqueeze(3).unsqueeze(4)
    if input_gain is not None:
        w = w * input_gain.expand(batch, in_channels).unsqueeze(1).unsqueeze(3).unsqueeze(4)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = torch.nn.functional.conv2d(x, w.to(x.dtype), padding=padding, groups=batch)
    return x.reshape(batch, -1, *x.shape[2:])


class SynthesisInput(nn.Module):
    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = as_pair(size)
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0], scale_bias_init=True)
        self.register_buffer("transform", torch.eye(3, 3))  # user-specified inverse transform of the image
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor, transforms: torch.Tensor | None = None) -> torch.Tensor:
        """transforms: per-sample inverse transforms [N, 3, 3] of the image; default the `transform` buffer."""
        transforms = self.transform.unsqueeze(0) if transforms is None else transforms.to(w.device, torch.float32)
        freqs = self.freqs.unsqueeze(0)
        phases = self.phases.unsqueeze(0)
        t = self.affine(w)  # (r_c, r_s, t_x, t_y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        n = w.shape[0]
        m_r = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ transforms
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[1, 1] = 0.5 * self.size[1] / self.sampling_rate
        grids = torch.nn.functional.affine_grid(
            theta.unsqueeze(0), [1, 1, int(self.size[1]), int(self.size[0])], align_corners=False
        )
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


def design_lowpass_filter(
    numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False
) -> torch.Tensor | None:
    """Kaiser-windowed low-pass (separable, 1-D) or radially symmetric jinc (2-D); None for one tap."""
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(
            scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs), dtype=torch.float32
        )
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    f *= np.outer(window, window)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


class SynthesisLayer(nn.Module):
    def __init__(
        self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
        in_channels: int, out_channels: int, in_size: int, out_size: int,
        in_sampling_rate: float, out_sampling_rate: float, in_cutoff: float, out_cutoff: float,
        in_half_width: float, out_half_width: float, conv_kernel: int = 3, filter_size: int = 6,
        lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp: float | None = 256,
    ):  # fmt: skip
        super().__init__()
        self.w_dim, self.is_torgb, self.is_critically_sampled, self.use_fp16 = (
            w_dim,
            is_torgb,
            is_critically_sampled,
            use_fp16,
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = as_pair(in_size), as_pair(out_size)
        self.in_sampling_rate, self.out_sampling_rate = in_sampling_rate, out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff, self.out_cutoff, self.in_half_width, self.out_half_width = (
            in_cutoff,
            out_cutoff,
            in_half_width,
            out_half_width,
        )
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1, scale_bias_init=True)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer(
            "up_filter", design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2, self.tmp_sampling_rate)
        )
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer(
            "down_filter",
            design_lowpass_filter(
                self.down_taps, out_cutoff, out_half_width * 2, self.tmp_sampling_rate, radial=self.down_radial
            ),
        )
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2  # symmetric interpretation of sample locations
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1])]

    def forward(self, x: torch.Tensor, w: torch.Tensor, force_fp32: bool = False, **_: Any) -> torch.Tensor:
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel**2))
        dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == "cuda") else torch.float32
        x = modulated_conv2d(
            x.to(dtype),
            self.weight,
            styles,
            padding=self.conv_kernel - 1,
            demodulate=not self.is_torgb,
            input_gain=input_gain,
        )
        return filtered_lrelu(
            x,
            self.up_filter,
            self.down_filter,
            self.bias.to(x.dtype),
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1 if self.is_torgb else SQRT2,
            slope=1 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )


class SynthesisNetwork(nn.Module):
    def __init__(
        self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
        channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
        first_stopband: float = 2**2.1, last_stopband_rel: float = 2**0.3, margin_size: int = 10,
        output_scale: float = 0.25, num_fp16_res: int = 4, **layer_kwargs: Any,
    ):  # fmt: skip
        super().__init__()
        layer_kwargs = {k: v for k, v in layer_kwargs.items() if k not in TRAINING_ONLY}
        self.w_dim, self.num_ws, self.img_resolution, self.img_channels = (
            w_dim,
            num_layers + 2,
            img_resolution,
            img_channels,
        )
        self.num_layers, self.num_critical, self.margin_size, self.output_scale = (
            num_layers,
            num_critical,
            margin_size,
            output_scale,
        )
        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels
        self.input = SynthesisInput(w_dim, int(channels[0]), int(sizes[0]), sampling_rates[0], cutoffs[0])
        self.layer_names = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim,
                is_torgb=(idx == num_layers),
                is_critically_sampled=(idx >= num_layers - num_critical),
                use_fp16=bool(sampling_rates[idx] * (2**num_fp16_res) > img_resolution),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]),
                out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev],
                out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev],
                out_half_width=half_widths[idx],
                **layer_kwargs,
            )
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(
        self, ws: torch.Tensor, input_transforms: torch.Tensor | None = None, **layer_kwargs: Any
    ) -> torch.Tensor:
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0], input_transforms)
        for name, w in zip(self.layer_names, ws[1:], strict=False):
            x = getattr(self, name)(x, w, **layer_kwargs)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)


class StyleGAN3Generator(Generator):
    """NVIDIA's StyleGAN3 generator (T: conv_kernel 3; R: conv_kernel 1 + radial filters). No noise inputs."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict[str, Any] | None = None, **synthesis_kwargs: Any):  # fmt: skip
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {})
        )


def make_transform(translate: tuple[float, float], angle_deg: float) -> np.ndarray:
    """NVIDIA's image transform (rotation by `angle_deg`, then translation); the input layer takes its inverse."""
    m = np.eye(3)
    s, c = np.sin(np.radians(angle_deg)), np.cos(np.radians(angle_deg))
    m[0] = [c, s, translate[0]]
    m[1] = [-s, c, translate[1]]
    return m
