"""Configuration: one frozen dataclass per concern, grouped in `ExperimentConfig`.

Defaults are the paper's (T=100, linear betas, epsilon prediction, K=30). Dataset presets are
named constructors whose values cite their source (docs/paper.md, "Architecture"). Every
config round-trips through plain dicts (and so JSON/YAML); unknown keys raise naming the valid
ones, and invalid values raise `ConfigError` (a `ValueError`) naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .labels import default_palette

Conditioning = Literal["sum", "concat", "image-concat", "add-after-down-1", "add-after-down-3", "add-after-down-5"]
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)
Sampler = Literal["ddpm", "ddim", "dpm-solver++", "sde-dpm-solver++"]  # the functions in sampling.py
SAMPLER_NAMES: tuple[str, ...] = get_args(Sampler)
Symmetry = Literal["none", "flips", "dihedral"]  # the transforms are in sampling.py
SYMMETRY_NAMES: tuple[str, ...] = get_args(Symmetry)
CropSetting = Literal["expansion", "tight"]  # Cityscapes instance crops (docs/datasets.md)
CROP_SETTINGS: tuple[str, ...] = get_args(CropSetting)
ModelKind = Literal["segdiff", "unet"]  # the registry in models.py maps each to its class
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
MaskEncoding = Literal["onehot", "bits"]  # how C > 2 classes are denoised (encoding.py)
MASK_ENCODINGS: tuple[str, ...] = get_args(MaskEncoding)


def mask_channels(num_classes: int, encoding: str = "onehot") -> int:
    """Channels of the signal the diffusion model denoises: 1 for binary (the paper's mask), C for
    one-hot, ceil(log2 C) for analog bits (encoding.py)."""
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes} must be >= 2 (background included)")
    _check_choice("mask_encoding", encoding, MASK_ENCODINGS)
    if num_classes == 2:
        return 1
    return num_classes if encoding == "onehot" else math.ceil(math.log2(num_classes))


class ConfigError(ValueError):
    """A config value, or a combination of values, that cannot run; the message names each one."""



def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}")


class _WrongType(Exception):
    """`_coerce`'s signal that a value does not fit its annotation; the caller names the key."""


def _describe(annotation: Any) -> str:
    """What a value of `annotation` is, in words for an error message ("a list of integers")."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        plural = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], _describe(args[0]))}" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any) -> Any:
    """`value` checked against a field annotation, normalised (int -> float, list -> tuple).

    bool fields take only true/false; int fields take integers, and a float only when it is
    integral (1e4 is 10000, 10000.5 is refused), never a bool; float fields take integers and
    floats; str and Literal fields take strings (a Literal one of its values). Numbers written as
    strings are refused. Annotations other than these pass the value through unchecked.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is type(None):
        if value is None:
            return value
    elif origin is Literal:
        if isinstance(value, str) and value in args:
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):  # JSON/YAML have no tuples
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                if len(value) != len(args):
                    raise _WrongType
                return tuple(_coerce(v, a) for v, a in zip(value, args))
            items = [_coerce(v, args[0]) for v in value] if args else list(value)
            return tuple(items) if origin is tuple else items
    elif origin in (typing.Union, types.UnionType):
        for member in args:
            try:
                return _coerce(value, member)
            except _WrongType:
                pass
    else:
        return value
    raise _WrongType


def _check_field(where: str, value: Any, annotation: Any) -> Any:
    """`_coerce`, or a ValueError naming the key, the value found, its type and what was expected."""
    try:
        return _coerce(value, annotation)
    except _WrongType:
        if get_origin(annotation) is Literal and isinstance(value, str):  # the wording of _check_choice
            choices = ", ".join(get_args(annotation))
            raise ConfigError(f"{where}={value!r} is not valid; choose one of {choices}") from None
        hint = ""
        if isinstance(value, str) and annotation in (int, float):
            try:
                float(value)
                hint = " (YAML 1.1 reads a number such as 1e-4 without a dot as text; write 1.0e-4)"
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected {_describe(annotation)}, found {value!r} "
                         f"({type(value).__name__}){hint}") from None


def _from_dict(cls, data: dict[str, Any], where: str):
    """Build dataclass `cls` from `data`, rejecting unknown keys by name and values of the wrong type.

    Each value is checked against its field's annotation (`_coerce` says what is accepted); the
    error names `where.key`, the value, its type and the type expected, e.g.
    "config.train.max_steps: expected an integer, found 10000.5 (float)".
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, found {type(data).__name__}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _check_field(f"{where}.{f.name}", data[f.name], hints[f.name])
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """The SegDiff network (docs/paper.md, "Architecture"). Defaults: the Vaihingen preset."""

    image_size: int = 256  # training input side; attention resolutions are relative to it
    in_channels: int = 3  # image channels (RGB / IR-R-G)
    base_channels: int = 128  # C, "128 base channels everywhere"
    channel_mult: tuple[int, ...] = (1, 1, 1, 2, 2, 4, 4)  # 7 levels for 256 inputs
    num_res_blocks: int = 3  # encoder blocks per level; the decoder has one more
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sides that get attention
    num_heads: int = 4
    norm_groups: int = 32  # GroupNorm(32) as in the reference; small presets use fewer
    dropout: float = 0.1
    rrdb_blocks: int = 6  # RRDB trunk depth of the image encoder F
    rrdb_channels: int = 64  # width inside F (ESRGAN's nf)
    rrdb_growth: int = 32  # dense-block growth (ESRGAN's gc)
    conditioning: Conditioning = "sum"  # the paper's ablation variants, see model.py
    # G also reads the previous sampling step's x_0 estimate (self-conditioning, Chen et al. 2022,
    # "Analog Bits"; trained with it on half the samples); not in the paper.
    self_condition: bool = False
    # A light head on F(I) (GroupNorm, SiLU, 3x3 conv to mask logits) trained with Dice + BCE beside
    # the diffusion loss, weighted by train.aux_weight, so that F learns the image-to-mask mapping at
    # a plain U-Net's pace (deep supervision, Lee et al. 2015); not in the paper. Training only:
    # sampling never runs it. Needs an encoder F (kind "segdiff", conditioning other than image-concat).
    aux_head: bool = False
    # Which model this config builds: "segdiff" (the fields above) or "unet", the plain U-Net
    # baseline (MONAI's BasicUNet with the widths below; it reads only in_channels and num_classes).
    kind: ModelKind = "segdiff"
    # SegDiff's denoising network: "segdiff", the paper's (F, G and the U-Net above, with its
    # timestep embedding and attention), or "basicunet", not in the paper: the U-Net baseline's
    # network (MONAI's BasicUNet, unet_features) reading the image and x_t concatenated, without the
    # step t (an x_0 network reads the noise level off x_t itself; Sun et al. 2025, "Is noise
    # conditioning necessary for denoising generative models?"). Only the fields the baseline reads,
    # and mask_channels, shape it; it needs diffusion.prediction "sample" or "logits".
    body: Literal["segdiff", "basicunet"] = "segdiff"
    unet_features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)  # BasicUNet's defaults, about 2 M parameters
    # Classes of the segmentation, background included. 2 is binary: one mask channel in {-1, +1},
    # the paper's, and one probability channel (the foreground's). More classes are denoised as
    # `mask_encoding` says ("onehot": C channels in {-1, +1}; "bits": ceil(log2 C) analog bits) and
    # predicted as C class probabilities (encoding.py).
    num_classes: int = 2
    mask_encoding: MaskEncoding = "onehot"
    # The classes' names in index order (empty: "background", "foreground" for binary, else "class 0", ...),
    # and their RGB colours for label pictures (empty: labels.default_palette).
    class_names: tuple[str, ...] = ()
    class_colours: tuple[tuple[int, int, int], ...] = ()

    @property
    def mask_channels(self) -> int:
        """Channels of the mask signal the network denoises: 1 for binary (`config.mask_channels`)."""
        return mask_channels(self.num_classes, self.mask_encoding)

    @property
    def prob_channels(self) -> int:
        """Channels of every probability map: 1 for binary (the foreground), else C."""
        return 1 if self.num_classes == 2 else self.num_classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """The classes' RGB colours: `class_colours`, else `labels.default_palette`."""
        return self.class_colours or default_palette(self.num_classes)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, index order."""
        if self.class_names:
            return self.class_names
        return ("background", "foreground") if self.num_classes == 2 else tuple(f"class {i}" for i in range(self.num_classes))

    def __post_init__(self) -> None:
        _check_choice("conditioning", self.conditioning, CONDITIONINGS)
        _check_choice("kind", self.kind, MODEL_KINDS)
        _check_choice("body", self.body, ("segdiff", "basicunet"))
        if self.body == "basicunet" and (self.self_condition or self.aux_head):
            raise ConfigError("body='basicunet' has neither self-conditioning nor an image encoder F for the "
                              "auxiliary head: set self_condition and aux_head to false")
        if self.aux_head and (self.kind != "segdiff" or self.conditioning == "image-concat"):
            which = f"kind={self.kind!r}" if self.kind != "segdiff" else "conditioning='image-concat'"
            raise ConfigError(f"aux_head=true supervises the image encoder F, which {which} does not have")
        if self.aux_head and self.num_classes != 2:
            raise ConfigError(f"aux_head=true is binary only so far (num_classes={self.num_classes})")
        mask_channels(self.num_classes, self.mask_encoding)  # checks both
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"class_names repeat: {self.class_names}")
        if self.class_colours and (len(self.class_colours) != self.num_classes or any(
                len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.class_colours)):
            raise ConfigError(f"class_colours: expected {self.num_classes} [r, g, b] triples of 0..255, "
                              f"found {self.class_colours}")
        if len(self.unet_features) != 6 or any(f < 1 for f in self.unet_features):
            raise ConfigError(f"unet_features={self.unet_features}: BasicUNet takes 6 positive widths "
                             "(5 encoder levels and the last decoder)")
        if self.base_channels % self.norm_groups:
            raise ConfigError(f"base_channels={self.base_channels} must be divisible by norm_groups={self.norm_groups}")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ConfigError(f"channel_mult={self.channel_mult} must be a non-empty tuple of positive ints")
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ConfigError(
                f"image_size={self.image_size} must be divisible by 2**(levels-1)={2 ** (levels - 1)} "
                f"for channel_mult with {levels} levels"
            )
        sides = [self.image_size // 2 ** level for level in range(levels)]
        if self.kind == "segdiff" and self.body == "segdiff" and set(self.attention_resolutions) - set(sides):
            # The network puts attention where a level's feature side is listed: a side no level
            # has would silently give no attention there (e.g. (16, 8) on a 96 px input).
            raise ConfigError(f"attention_resolutions={self.attention_resolutions}: the feature maps of a "
                              f"{self.image_size} px input with {levels} levels are {', '.join(map(str, sides))} "
                              f"px across; choose sides among those (the paper: the 16 and 8 px levels)")
        if self.conditioning.startswith("add-after-down-"):
            n = int(self.conditioning.rsplit("-", 1)[1])
            if n > levels - 1:
                raise ConfigError(f"conditioning={self.conditioning} needs at least {n + 1} levels, found {levels}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if self.rrdb_blocks < 0:
            raise ConfigError(f"rrdb_blocks={self.rrdb_blocks} must be >= 0")
        if self.num_res_blocks < 1:
            raise ConfigError(f"num_res_blocks={self.num_res_blocks} must be >= 1")


@dataclass(frozen=True)
class DiffusionConfig:
    """The DDPM of docs/paper.md, "Method"."""

    num_steps: int = 100  # T
    beta_schedule: Literal["linear"] = "linear"  # 1e-4*(1000/T) .. 0.02*(1000/T)
    # What the network outputs: "epsilon" (the paper: the noise), "sample" (x_0, the mask itself,
    # which trains the high-noise steps far faster; see the vaihingen-cpu preset) or "logits" (x_0's
    # logits z, x_0 = 2 sigmoid(z) - 1, trained with Dice + binary cross-entropy against the mask
    # instead of the MSE: the U-Net baseline's loss, as Diff-UNet (Xing et al. 2023) trains its x_0).
    prediction: Literal["epsilon", "sample", "logits"] = "epsilon"
    # Input scaling b: the chain diffuses b x_0, so x_t = sqrt(abar_t) b x_0 + sqrt(1 - abar_t) eps
    # (Chen 2023, "On the importance of noise scheduling for diffusion models"; Pix2Seq-D, Chen et al.
    # 2023, segments with b = 0.1). b < 1 lowers every step's signal-to-noise ratio, so fewer training
    # steps can read the mask off x_t and more must read it off the image. 1: the paper.
    input_scale: float = 1.0
    # What the network reads for x_t: "x_t" itself (the paper), or "posterior_mean", E[x_0 | x_t] for
    # x_0 = +-1 equally likely in each pixel and channel, tanh(sqrt(abar_t) b x_t / (1 - abar_t)): the
    # same information (an invertible map of x_t at each t), scaled by how much x_t says about the mask.
    # At t = T it is about 0, so the network reads the image alone, as the U-Net baseline does, instead
    # of pure noise it must learn to ignore (a network without a timestep input, model.body=basicunet,
    # cannot tell from t that it should); near t = 0 it is the mask's sign.
    mask_input: Literal["x_t", "posterior_mean"] = "x_t"

    def __post_init__(self) -> None:
        _check_choice("beta_schedule", self.beta_schedule, ("linear",))
        _check_choice("prediction", self.prediction, ("epsilon", "sample", "logits"))
        _check_choice("mask_input", self.mask_input, ("x_t", "posterior_mean"))
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise ConfigError(f"input_scale={self.input_scale} must be a positive number (1: the paper)")
        if not 21 <= self.num_steps <= 1000:
            # The linear schedule ends at beta_T = 0.02 * 1000 / T, which must stay below 1.
            raise ConfigError(f"num_steps={self.num_steps} must be in [21, 1000] (beta_T = 20/T must be < 1)")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"  # vaihingen | monuseg | cityscapes | camvid | folder | nnunet | synthetic
    root: str = ""  # data folder; empty means $SEGDIFF_DATA for the named benchmarks
    val_fraction: float = 0.1  # validation carved from the training split, fixed seed
    augment: bool = True
    num_workers: int = 0
    num_train: int = 2000  # synthetic only: number of generated training images
    num_test: int = 64  # synthetic only: held-out images
    # Cityscapes only: "expansion" crops each instance's box grown by 15 % (10-20 % at random for
    # training), "tight" the box itself; the paper reports both.
    setting: CropSetting = "expansion"
    # Cityscapes only: a JSON file, outside the data folder, keeping the instance index between
    # runs (indexing the 2975 training frames takes minutes); empty: index afresh every time.
    index_cache: str = ""
    # Vaihingen only: "clean" antialiased resizing; "reference" the authors' code (image nearest
    # neighbour, mask bilinear then > 0, which enlarges the ground truth), to reproduce their numbers.
    preprocessing: Literal["clean", "reference"] = "clean"
    # MoNuSeg only: masks from the shipped PNGs, or rasterised from the annotation XMLs (which only
    # the test release ships).
    mask_source: Literal["png", "xml"] = "png"
    # MoNuSeg only: the side the 1000x1000 images are resized to, covered by image_size tiles at test
    # time; 0: twice the input (the paper: 512 for 256). Scores are taken at 512 whatever it is.
    resize: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        _check_choice("setting", self.setting, CROP_SETTINGS)
        _check_choice("preprocessing", self.preprocessing, ("clean", "reference"))
        _check_choice("mask_source", self.mask_source, ("png", "xml"))
        if self.resize < 0:
            raise ConfigError(f"data.resize={self.resize} must be 0 (twice the input) or a side in pixels")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation of docs/paper.md, "Training"."""

    batch_size: int = 8  # global batch (Vaihingen, MoNuSeg: 8; Cityscapes: 30)
    max_steps: int = 300_000  # the reference runs 300k iterations
    lr: float = 1e-4  # AdamW, no warm-up
    # cosine: lr -> 0 over max_steps, or with a time budget at the step the budget is estimated to reach
    # (training.Horizon, measured step times); the paper: constant
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    ema_decay: float = 0.9999  # the EMA weights are the ones evaluated
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)): short runs need it
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000  # steps between validations (0: never)
    val_generations: int = 3  # K used for validation IoU (cheap)
    save_every: int = 1000
    out_dir: str = "runs/segdiff"
    # Stop cleanly after this many minutes of training, counted over all sessions of a resumed run
    # (0: no limit); the cosine schedule then ends at the step the budget is estimated to reach.
    time_budget_min: float = 0.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (under torchrun: cuda:LOCAL_RANK)
    keep_last: int = 3  # step-numbered full checkpoints kept (last-<step>.safetensors)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16: CUDA only, with a dynamic loss scale
    max_nonfinite: int = 20  # stop after this many consecutive steps with a non-finite loss or gradient
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: off, as in the paper)
    channels_last: bool = False  # speed options: same results within float tolerance
    fused_adamw: bool = False  # AdamW's fused kernel (CUDA, CPU) where this torch offers it
    compile: bool = False  # torch.compile the network (first steps slower while it compiles)
    # Training steps t drawn with density proportional to t^(power - 1): 1 is uniform (the paper);
    # above 1 more of each batch goes to the high-noise steps, where the image alone must give the mask.
    timestep_power: float = 1.0
    # Not in the paper: add this weight times a soft Dice loss between the x_0 estimate, read as a
    # probability, and the mask (monai's DiceLoss over the whole batch), the overlap loss the U-Net
    # baseline trains with. 0: the paper's plain MSE.
    dice_weight: float = 0.0
    # Not in the paper: add this weight times Dice + binary cross-entropy of model.aux_head's logits
    # (read from F(I)) against the mask, over the pixels that are not ignored; deep supervision of
    # the image encoder. 0: off (and model.aux_head must then be false).
    aux_weight: float = 0.0
    # diffusion.prediction=logits only (other predictions never read it): its Dice is one ratio over the whole
    # batch (true), or one per image, averaged (false: the U-Net baseline's, monai's default; images with
    # little foreground weigh as much).
    dice_batch: bool = True
    # Not in the paper: recycling (Fu et al. 2023, ImgX-DiffSeg). This share of each batch is trained
    # on what the sampler's later calls see: x_t built by noising the network's own x_0 estimate from
    # pure noise (a first pass at t = T - 1 without gradients), at a t drawn from the sampler's steps
    # after its first (sample.num_sampling_steps). 0: every x_t is built from the mask, as in the paper.
    recycle: float = 0.0
    # TensorBoard event files in OUT_DIR/tensorboard (tensorboard_log.py): null writes them when the
    # tensorboard package is installed (the `tensorboard` extra), true requires it, false never writes them.
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if self.max_steps < 0:
            raise ConfigError(f"max_steps={self.max_steps} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        _check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        _check_choice("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        for name in ("keep_last", "max_nonfinite", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("grad_clip", "val_every"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.timestep_power > 0:
            raise ConfigError(f"timestep_power={self.timestep_power} must be > 0 (1: uniform steps)")
        if not self.dice_weight >= 0:
            raise ConfigError(f"dice_weight={self.dice_weight} must be >= 0 (0: MSE alone, as in the paper)")
        if not self.aux_weight >= 0:
            raise ConfigError(f"aux_weight={self.aux_weight} must be >= 0 (0: no auxiliary head, as in the paper)")
        if not 0 <= self.recycle <= 1:
            raise ConfigError(f"recycle={self.recycle} must be in [0, 1] (the share of each batch recycled; 0: off)")


@dataclass(frozen=True)
class SampleConfig:
    num_generations: int = 30  # K, the paper's main tables
    sampler: Sampler = "ddpm"
    num_sampling_steps: int = 0  # 0: all T steps
    max_batch: int = 32  # generations run together; bounds memory whatever K is
    clip_x0: bool = False  # clamp each step's x_0 estimate to [-1, 1] (the paper does not)
    # Spread the K generations over flipped ("flips") or also 90-degree rotated ("dihedral") copies
    # of the image, mapped back before averaging (sampling.predict); the paper samples "none".
    symmetry: Symmetry = "none"
    eta: float = 0.0  # DDIM's eta (sampler "ddim" only): 0 deterministic given x_T, 1 DDPM-like
    # Speed options; each changes results by float rounding at most (docs/performance.md).
    autocast: bool = False  # the network in bfloat16 (float16 on GPUs without it)
    channels_last: bool = False  # NHWC inputs to the per-step network call
    compile: bool = False  # torch.compile the per-step network call (compiles for minutes)

    def __post_init__(self) -> None:
        _check_choice("sampler", self.sampler, SAMPLER_NAMES)
        _check_choice("symmetry", self.symmetry, SYMMETRY_NAMES)
        for name in ("num_generations", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_sampling_steps < 0:
            raise ConfigError(f"num_sampling_steps={self.num_sampling_steps} must be >= 0 (0: all T steps)")
        if self.eta and self.sampler != "ddim":
            raise ConfigError(f"eta={self.eta} applies to sampler 'ddim' only, not {self.sampler!r}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"eta={self.eta} must be in [0, 1]")

    def describe(self) -> str:
        """One line naming every setting, for logs and reports."""
        steps = self.num_sampling_steps or "all T"
        extras = [name for name in ("clip_x0", "autocast", "channels_last", "compile") if getattr(self, name)]
        return (f"K={self.num_generations}, sampler {self.sampler} ({steps} steps), symmetry {self.symmetry}"
                + (f", eta {self.eta}" if self.sampler == "ddim" else "") + "".join(f", {e}" for e in extras)
                + f", max_batch {self.max_batch}")


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str = "custom"

    def __post_init__(self) -> None:
        # Checks across sections. The auxiliary head and its weight go together: a weight without the
        # head has nothing to train, and a head without a weight would hold parameters no loss
        # reaches (DDP refuses those), kept in every checkpoint for nothing.
        if self.model.body == "basicunet" and self.diffusion.prediction == "epsilon":
            raise ConfigError("model.body=basicunet has no timestep input, so it must predict x_0: set "
                              "diffusion.prediction to sample or logits")
        if self.train.recycle and self.diffusion.prediction == "epsilon":
            raise ConfigError(f"train.recycle={self.train.recycle} trains x_t made from the network's own estimate "
                              "against the mask, so the network must predict x_0: set diffusion.prediction to "
                              "sample or logits")
        if self.train.recycle and self.sample.num_sampling_steps == 1:
            raise ConfigError(f"train.recycle={self.train.recycle} trains the sampler's steps after its first, and "
                              "sample.num_sampling_steps=1 has none: use 2 or more steps, or recycle 0")
        if self.diffusion.prediction == "logits" and self.train.dice_weight > 0:
            raise ConfigError(f"train.dice_weight={self.train.dice_weight} does not apply to diffusion.prediction="
                              "logits, whose loss is already Dice + cross-entropy: set it to 0")
        if self.train.aux_weight > 0 and not self.model.aux_head:
            raise ConfigError(f"train.aux_weight={self.train.aux_weight} needs model.aux_head=true")
        if self.model.aux_head and not self.train.aux_weight > 0:
            raise ConfigError("model.aux_head=true needs train.aux_weight > 0 (the weight of the head's loss)")
        side = self.model.image_size
        if self.data.dataset == "monuseg" and self.data.resize and (self.data.resize < side or self.data.resize % side):
            raise ConfigError(f"data.resize={self.data.resize} must be a multiple of model.image_size={side}: "
                              "the MoNuSeg test images are covered by whole tiles of the model's input")

    # --- presets -----------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> "ExperimentConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]()

    @classmethod
    def vaihingen(cls) -> "ExperimentConfig":
        # docs/paper.md "Architecture": 256 input, 7 levels 1,1,1,2,2,4,4, 6 RRDB, dropout 0.1, batch 8.
        return cls(
            model=ModelConfig(image_size=256, channel_mult=(1, 1, 1, 2, 2, 4, 4), rrdb_blocks=6, dropout=0.1),
            data=DataConfig(dataset="vaihingen"),
            train=TrainConfig(batch_size=8),
            preset="vaihingen",
        )

    @classmethod
    def monuseg(cls) -> "ExperimentConfig":
        # 256 crops of the 512-resized image, 7 levels, 12 RRDB, no dropout, batch 8.
        return cls(
            model=ModelConfig(image_size=256, channel_mult=(1, 1, 1, 2, 2, 4, 4), rrdb_blocks=12, dropout=0.0),
            data=DataConfig(dataset="monuseg"),
            train=TrainConfig(batch_size=8),
            preset="monuseg",
        )

    @classmethod
    def cityscapes(cls) -> "ExperimentConfig":
        # 128 input, 6 levels 1,1,2,2,4,4, 15 RRDB, no dropout, batch 30.
        return cls(
            model=ModelConfig(image_size=128, channel_mult=(1, 1, 2, 2, 4, 4), rrdb_blocks=15, dropout=0.0),
            data=DataConfig(dataset="cityscapes"),
            train=TrainConfig(batch_size=30),
            preset="cityscapes",
        )

    @classmethod
    def small(cls) -> "ExperimentConfig":
        # CPU work at 128 px: same design at C=32, 5 levels, 2 res blocks, 2 RRDB (about 3 M params).
        return cls(
            model=ModelConfig(
                image_size=128, base_channels=32, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                attention_resolutions=(16, 8), dropout=0.0, rrdb_blocks=2, rrdb_channels=32, rrdb_growth=16,
            ),
            train=TrainConfig(batch_size=8, max_steps=20_000),
            preset="small",
        )

    @classmethod
    def vaihingen_cpu(cls) -> "ExperimentConfig":
        # Vaihingen in an hour on 2 CPU cores (docs/results.md). 64 px input: at 128 px even a
        # 3 M-parameter SegDiff trains at under 7 samples/s here, too few updates in an hour; at 64 px
        # it runs about 2x faster and the central building (3.9-21.6 % of the tile) stays 13-30 px
        # across. Scores are taken at the paper's 256 px (bilinear upsampling of the probability).
        # Same design as the paper: F = 1 narrow RRDB, 4 levels of widths 16, 32, 64, 128, attention
        # at 16 and 8 px (thin where the resolution is high, where the convolution time goes: the hour
        # fits 7000 steps where widths 32, 64, 64, 128 fit under 5000, for the same result within noise).
        # Departures, each measured (docs/results.md): the network predicts x_0, not the noise (with
        # the paper's epsilon, validation IoU stayed below 0.26 for 25 minutes: the noise loss barely
        # trains the high-noise steps that decide the mask's shape); training steps t are drawn with
        # density ~ t (timestep_power 2), so more of each batch goes to those steps; F(I) and G(x_t)
        # are concatenated (the paper's `concat` arm, the best of its ablation here), and sampling
        # clamps each step's x_0 estimate to [-1, 1]. lr 5e-4 with clipping and a fast EMA suit a run
        # of a few thousand steps; the lr decays (cosine) to 0 at 7000 steps, which fit in the hour on
        # the 2 cores of the machine in docs/results.md, so the run ends on small steps. Sampling: 2
        # steps of SDE-DPM-Solver++, measured on the test split after an hour's run (docs/results.md,
        # "Vaihingen: where diffusion earns its cost": K = 30, IoU within a point of 10 steps at a
        # lower ECE and a fifth of the cost, as on MoNuSeg).
        return cls(
            model=ModelConfig(
                image_size=64, base_channels=16, channel_mult=(1, 2, 4, 8), num_res_blocks=1,
                attention_resolutions=(16, 8), norm_groups=8, dropout=0.0, rrdb_blocks=1, rrdb_channels=16,
                rrdb_growth=8, conditioning="concat",
            ),
            diffusion=DiffusionConfig(prediction="sample"),
            data=DataConfig(dataset="vaihingen"),
            train=TrainConfig(batch_size=8, max_steps=7000, lr=5e-4, lr_schedule="cosine", ema_decay=0.999,
                              grad_clip=1.0, val_every=250, val_generations=3, save_every=250, log_every=25,
                              time_budget_min=60.0, timestep_power=2.0),
            sample=SampleConfig(sampler="sde-dpm-solver++", num_sampling_steps=2, clip_x0=True),
            preset="vaihingen-cpu",
        )

    @classmethod
    def cpu(cls) -> "ExperimentConfig":
        # Your own data (a folder dataset) on a CPU in 20 minutes (docs/results.md, "Your own data"):
        # a diffusion model whose denoiser is the U-Net baseline's network (model.body=basicunet:
        # MONAI's BasicUNet on the image and x_t concatenated, no timestep input), predicting x_0's
        # logits trained with Dice + cross-entropy (diffusion.prediction=logits), the Dice taken per
        # image as the U-Net's is (train.dice_batch=false), reading the posterior mean of the mask
        # given x_t rather than x_t (diffusion.mask_input=posterior_mean: the body has no timestep input,
        # and this input's magnitude says how noisy it is). Chosen on the CamVid car task's validation
        # split (8-minute screening runs, then 20-minute runs, docs/results.md): with the paper's
        # network (F, G, attention, timestep embedding; x_0 by MSE, the design below) SegDiff learnt
        # far slower per step than the U-Net and its step cost 2-3x as much; the logits loss gained
        # about a point, the BasicUNet body about 15, the per-image Dice about one more in 20 minutes
        # (one Dice ratio over the batch before), the posterior-mean input 1-2 more on a video held out
        # of training (docs/training.md, "The mask input"). The rest is `_cpu_design`: 64 px input, t drawn
        # with density ~ t, lr 5e-4 with clipping, cosine to 0 when the time budget ends, a fast EMA,
        # K = 9 generations of 2-step SDE-DPM-Solver++. PAPER_NETWORK's overrides
        # (`--set model.body=segdiff --set diffusion.prediction=sample --set diffusion.mask_input=x_t`)
        # give the paper's network back (`vaihingen-cpu`'s design).
        base = cls._cpu_design()
        return replace(base, model=replace(base.model, body="basicunet"),
                       diffusion=replace(base.diffusion, prediction="logits", mask_input="posterior_mean"),
                       train=replace(base.train, dice_batch=False), preset="cpu")

    @classmethod
    def _cpu_design(cls) -> "ExperimentConfig":
        # The vaihingen-cpu design on a folder dataset for 20 minutes, the paper's network (the
        # `cpu` preset before its BasicUNet body; the benchmarks' CPU-hour presets, `_cpu_hour`).
        # 64 px input, because on 2 cores a 64 px SegDiff makes about 2 steps/s of batch 8 and a 128
        # px one 4x fewer, too few updates for a short run; objects under ~5 % of the image side (a
        # distant pedestrian) vanish at 64 px: raise model.image_size for those (and the budget with
        # it). x_0 prediction with more high-noise training steps (timestep_power 2), F(I) and G(x_t)
        # concatenated, lr 5e-4 with clipping and a fast EMA; the cosine lr reaches 0 when the time
        # budget ends (20 minutes; --time-budget changes it), whatever the machine's speed. Sampling:
        # K = 9 generations of 2-step SDE-DPM-Solver++ (vaihingen-cpu's sampler): K = 9 is within a
        # point of K = 30 on Vaihingen at a third of the cost; 2 steps scored above 10 on the
        # validation split of the CamVid car task (docs/results.md, "Your own data"), as on both
        # benchmarks' test splits, at a fifth of the cost, and above 1 on a video held out of its
        # training (0006R0), within 0.2 points of 10 there.
        base = cls.vaihingen_cpu()
        return replace(
            base,
            data=DataConfig(dataset="folder"),
            train=replace(base.train, max_steps=100_000, time_budget_min=20.0, out_dir="runs/cpu"),
            sample=replace(base.sample, num_generations=9),
            preset="cpu",
        )

    @classmethod
    def camvid(cls) -> "ExperimentConfig":
        # CamVid's 11 classes at full size, for a GPU: the paper's Vaihingen network (256 px input,
        # 7 levels, 6 RRDB, dropout 0.1, batch 8, epsilon prediction, the paper's optimisation and
        # K = 30 DDPM sampling) with an 11-channel one-hot mask. The paper has no CamVid run: this
        # is its design on CamVid, not a published configuration.
        base = cls.vaihingen()
        return replace(base, model=replace(base.model, num_classes=11), data=DataConfig(dataset="camvid"),
                       train=replace(base.train, out_dir="runs/camvid"), preset="camvid")

    @classmethod
    def camvid_cpu(cls) -> "ExperimentConfig":
        # CamVid's 11 classes on 2 CPU cores in an hour (docs/results.md, "CamVid"): `_cpu_design`
        # (the paper's network) with an 11-channel one-hot mask, on CamVid's own train split (367
        # images; val, 101, validates).
        # 64 px input, chosen by measurement (experiments/camvid_cpu.py sizes, docs/results.md): a
        # perfect 64 px model would still score 81.9 mIoU at 480x360 (96 px: 86.7, 128 px: 89.4; the
        # pole class loses most, 32 IoU at 64 px), far above what an hour of CPU training reaches,
        # while a SegDiff step costs 2.5x as much at 96 px and 6x at 128 px. Attention at the two
        # coarsest levels (16 and 8 px). The frame is resized to a square; scores are taken at 480x360.
        # Sampling: 10 steps, as measured there; the `cpu` preset's 2 steps were not measured on 11 classes.
        preset = cls._cpu_hour("camvid-cpu", DataConfig(dataset="camvid"), num_classes=11)
        return replace(preset, sample=replace(preset.sample, num_sampling_steps=10))

    @classmethod
    def monuseg_cpu(cls) -> "ExperimentConfig":
        # MoNuSeg's 30 training images on 2 CPU cores in an hour (docs/results.md, "MoNuSeg"):
        # `_cpu_design` (64 px, x_0 prediction, concat, K = 9 of SDE-DPM-Solver++) on random
        # 64 px crops of the images resized to 256, half the paper's magnification; a test image is
        # covered by 16 tiles and scored at 512 like the paper's. Chosen by measurement
        # (experiments/against_unet.py ceiling): a perfect model at 256 would score 86.8 IoU at 512,
        # at 128 (the quadrant protocol for a 64 px model) only 76.0, 7 points above the paper's
        # SegDiff, because nuclei 15-30 px across at 1000 px shrink to 2-4 px; a 64 px step costs
        # the same at either scale, only testing costs 4x more tiles. Sampling: the `cpu` preset's 2
        # steps of SDE-DPM-Solver++, measured here on the test split after the hour's run
        # (docs/results.md, "MoNuSeg": K = 30, IoU +0.78 +- 0.10 points above 10 steps at the same
        # ECE, a fifth of the cost; 1 step scores about as well but its ECE is 1.6x worse).
        return cls._cpu_hour("monuseg-cpu", DataConfig(dataset="monuseg", resize=4 * cls._cpu_design().model.image_size))

    @classmethod
    def _cpu_hour(cls, name: str, data: DataConfig, **model: Any) -> "ExperimentConfig":
        # The `cpu` design with the paper's network (`_cpu_design`: 64 px, attention at 16 and 8 px)
        # on a benchmark for an hour on 2 cores, validated and saved every 500 steps, into runs/NAME.
        base = cls._cpu_design()
        return replace(base, model=replace(base.model, **model), data=data,
                       train=replace(base.train, time_budget_min=60.0, val_every=500, save_every=500,
                                     out_dir=f"runs/{name}"),
                       preset=name)

    @classmethod
    def tiny(cls) -> "ExperimentConfig":
        # The demo and the tests: 32 px, C=16, 3 levels, 1 res block, 1 narrow RRDB (0.33 M params);
        # about 0.15 s per batch-16 step on 2 CPU cores. Higher lr and faster EMA suit a short run.
        return cls(
            model=ModelConfig(
                image_size=32, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=(8,), norm_groups=8, dropout=0.0, rrdb_blocks=1, rrdb_channels=16,
                rrdb_growth=8,
            ),
            train=TrainConfig(batch_size=16, max_steps=1200, lr=1e-3, ema_decay=0.999, val_every=0, log_every=50),
            preset="tiny",
        )

    # --- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        sections = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig,
                    "train": TrainConfig, "sample": SampleConfig}
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping, found {type(data).__name__}")
        unknown = sorted(set(data) - set(sections) - {"preset"})
        if unknown:
            raise ConfigError(f"config: unknown key(s) {', '.join(unknown)}; valid keys: "
                             f"{', '.join(sorted([*sections, 'preset']))}")
        kwargs: dict[str, Any] = {k: _from_dict(c, data.get(k, {}), f"config.{k}") for k, c in sections.items()}
        return cls(**kwargs, preset=str(data.get("preset", "custom")))

    def override(self, assignments: list[str]) -> "ExperimentConfig":
        """Apply `section.key=value` strings (the CLI's --set), parsed as YAML scalars.

        Values are then checked as `from_dict` checks them. Two readings help the command line:
        text that YAML 1.1 leaves a string but Python reads as a number ("1e-4", "1e4") is taken as
        that number for a numeric key (an integer key takes it when it is integral), and a string key
        takes the text as written when YAML would read something else (a path named 2024).
        """
        data = self.to_dict()
        for item in assignments:
            m = re.fullmatch(r"(\w+)\.(\w+)=(.*)", item)
            if not m:
                raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=2e-4")
            section, key, raw = m.groups()
            if section not in data or not isinstance(data[section], dict):
                raise ConfigError(f"--set {item!r}: unknown section {section!r}; valid: model, diffusion, data, train, sample")
            if key not in data[section]:
                raise ConfigError(f"--set {item!r}: unknown key {key!r}; valid: {', '.join(sorted(data[section]))}")
            current = data[section][key]
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                if not isinstance(current, str):
                    problem = f" ({exc.problem})" if getattr(exc, "problem", None) else ""
                    raise ConfigError(f"--set {item!r}: {raw!r} is not a valid YAML value{problem}") from None
                value = raw
            if isinstance(current, str) and not isinstance(value, str):
                value = raw
            elif isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, str):
                try:
                    value = float(value)  # YAML 1.1 reads "1e-4" as a string
                except ValueError:
                    pass  # left as text: from_dict names the key, the value and the type expected
            data[section][key] = value
        return ExperimentConfig.from_dict(data)


PRESETS = {
    "vaihingen": ExperimentConfig.vaihingen,
    "monuseg": ExperimentConfig.monuseg,
    "cityscapes": ExperimentConfig.cityscapes,
    "camvid": ExperimentConfig.camvid,
    "vaihingen-cpu": ExperimentConfig.vaihingen_cpu,
    "cpu": ExperimentConfig.cpu,
    "camvid-cpu": ExperimentConfig.camvid_cpu,
    "monuseg-cpu": ExperimentConfig.monuseg_cpu,
    "small": ExperimentConfig.small,
    "tiny": ExperimentConfig.tiny,
}
# The overrides of the `cpu` preset that give the paper's network back (vaihingen-cpu's design): its
# body with F, G, attention and timestep embedding, x_0 by MSE, reading x_t.
PAPER_NETWORK: tuple[str, ...] = ("model.body=segdiff", "diffusion.prediction=sample", "diffusion.mask_input=x_t")
