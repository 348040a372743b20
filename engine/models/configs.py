"""The architecture configs of the model families, as plain data (no torch import).

The zoo, index headers, manifests and the command line read them; only building a
module (``vqclip.models.clip`` / ``vqclip.models.vqgan``) needs torch, so the paths that
run an existing export start without it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["ACTIVATION_NAMES", "CLIPConfig", "VQGANConfig"]

# CLIPConfig.activation: OpenAI's weights were trained with "quick_gelu" (x * sigmoid(1.702 x)),
# OpenCLIP's LAION/DataComp ViTs with exact "gelu"; vqclip.models.clip maps each to its module.
ACTIVATION_NAMES = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of one CLIP model; named instances live in ``vqclip.zoo``."""

    embed_dim: int = 512  # size of the joint image/text embedding
    image_size: int = 224  # square input resolution of the image tower
    vision_patch_size: int = 32  # pixels per side of one patch token
    vision_width: int = 768  # residual width of the image transformer
    vision_layers: int | tuple[int, ...] = 12  # transformer blocks; a tuple: a ResNet's bottlenecks per stage
    vision_heads: int = 12  # attention heads of the image tower (ViT: width // head width; ResNet pool: width / 2)
    vision_stem: str = "patch"  # "patch": OpenAI's strided conv; "conv": a small conv stem, same token grid
    context_length: int = 77  # text tokens, start and end included
    vocab_size: int = 49408  # BPE vocabulary (OpenAI's, 49,152 merges + 256 bytes + start/end)
    text_width: int = 512  # residual width of the text transformer
    text_layers: int = 12  # residual blocks in the text transformer
    text_heads: int = 8  # attention heads in the text transformer (OpenAI: width // 64)
    # What the released families differ in beyond shapes; the shapes cannot tell them.
    activation: str = "quick_gelu"  # MLP nonlinearity: OpenAI's weights "quick_gelu", OpenCLIP's LAION ViTs "gelu"
    layer_norm_eps: float = 1e-5  # every LayerNorm of both towers
    vision_mlp_width: int = 0  # hidden units of each image MLP; 0: 4 x vision_width (OpenCLIP's ViT-g/bigG differ)
    text_mlp_width: int = 0  # hidden units of each text MLP; 0: 4 x text_width
    towers: str = "both"  # "image" / "text": one tower alone (HF CLIPVisionModelWithProjection / CLIPText...)

    def __post_init__(self) -> None:
        if isinstance(self.vision_layers, list):  # a config read back from JSON
            object.__setattr__(self, "vision_layers", tuple(self.vision_layers))
        for name, width in (("vision_mlp_width", self.vision_width), ("text_mlp_width", self.text_width)):
            if not getattr(self, name):
                object.__setattr__(self, name, 4 * width)
        if self.towers not in ("both", "image", "text"):
            raise ValueError(f"towers must be 'both', 'image' or 'text', not {self.towers!r}")
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation must be one of {list(ACTIVATION_NAMES)}, not {self.activation!r}")
        if self.is_resnet:
            if len(self.vision_layers) != 4 or self.image_size % 32:
                raise ValueError("a ResNet image tower has 4 stages and an image_size that is a multiple of 32")
            if (self.vision_width * 32) % self.vision_heads or self.text_width % self.text_heads:
                raise ValueError("each attention width must be a multiple of its head count")
            return
        if self.image_size % self.vision_patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of vision_patch_size "
                f"{self.vision_patch_size}"
            )
        if self.vision_width % self.vision_heads or self.text_width % self.text_heads:
            raise ValueError("each transformer width must be a multiple of its head count")
        if self.vision_stem not in ("patch", "conv"):
            raise ValueError(f"vision_stem must be 'patch' or 'conv', not {self.vision_stem!r}")
        if self.vision_stem == "conv" and self.vision_patch_size & (self.vision_patch_size - 1):
            raise ValueError("the conv stem needs a power-of-two vision_patch_size")

    @property
    def has_image(self) -> bool:
        return self.towers in ("both", "image")

    @property
    def has_text(self) -> bool:
        return self.towers in ("both", "text")

    @property
    def is_resnet(self) -> bool:
        """True for OpenAI's ResNet image towers (RN50 ...), whose layers are per-stage counts."""
        return isinstance(self.vision_layers, tuple)

    @property
    def grid_size(self) -> int:
        """Tokens per side of the image tower's last feature map (ResNet: 32x downsampled)."""
        return self.image_size // (32 if self.is_resnet else self.vision_patch_size)

    @property
    def vision_head_width(self) -> int:
        return (self.vision_width * 32 if self.is_resnet else self.vision_width) // self.vision_heads

    @property
    def text_head_width(self) -> int:
        return self.text_width // self.text_heads

    def to_dict(self) -> dict:
        """The fields, plus the derived head widths, so a manifest says what was built."""
        d = asdict(self)
        if self.is_resnet:
            d["vision_layers"] = list(self.vision_layers)
        d["vision_head_width"], d["text_head_width"] = self.vision_head_width, self.text_head_width
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        """The config ``to_dict`` wrote (derived entries are dropped)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class VQGANConfig:
    """Architecture of one VQGAN; named instances live in ``vqclip.zoo`` (``vqgan-f16-16384``).

    Example: ``VQGANConfig(ch=64, ch_mult=(1, 2), attn_resolutions=(16,), resolution=32,
    z_channels=64, embed_dim=64, n_embed=512)`` is a small f2 model.
    """

    ch: int = 128  # base channel width; level i is ch * ch_mult[i] wide
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width multiplier per level; len - 1 halvings (f16 for 5)
    num_res_blocks: int = 2  # ResNet blocks per encoder level (decoder levels have one more)
    attn_resolutions: tuple[int, ...] = (16,)  # nominal side lengths (from `resolution`) given self-attention
    z_channels: int = 256  # channels between the encoder/decoder and the 1x1 quant convs
    embed_dim: int = 256  # width of one codebook vector (the latent the quantiser sees)
    n_embed: int = 16384  # codebook size
    resolution: int = 256  # training image side; only decides which levels carry attention
    in_channels: int = 3  # image channels the encoder reads
    out_ch: int = 3  # image channels the decoder writes
    dropout: float = 0.0  # ResNet-block dropout (0 in every released model; inert at inference)
    beta: float = 0.25  # training only: weight of the quantiser's (legacy-placed) loss term

    def __post_init__(self) -> None:
        # Accept lists (as a YAML file gives them) but store tuples: the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, not {self.ch_mult}")
        widths = [self.ch] + [self.ch * m for m in self.ch_mult]
        if any(w % 32 for w in widths):
            raise ValueError(f"every level width {widths} must be a multiple of 32 (GroupNorm with 32 groups)")
        if self.num_res_blocks < 1 or self.n_embed < 1 or self.embed_dim < 1 or self.z_channels < 1:
            raise ValueError("num_res_blocks, n_embed, embed_dim and z_channels must be positive")
        if self.resolution < self.factor:
            raise ValueError(f"resolution {self.resolution} is smaller than the downsampling factor {self.factor}")

    @property
    def factor(self) -> int:
        """Image pixels per latent cell along one side (16 for five levels)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        """Latent grid side at the training resolution (16 for f16 at 256)."""
        return self.resolution // self.factor

    def to_dict(self) -> dict:
        return asdict(self)
