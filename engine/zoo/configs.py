"""The built-in named models. Importing this module registers them."""
from __future__ import annotations

from engine.models.clip import CLIPConfig
from engine.zoo.registry import ModelRecord, register

# OpenAI's released CLIP ViTs (the shapes of the files their clip.load downloads).
VIT_B_32 = register(ModelRecord(
    name="ViT-B-32", family="clip", aliases=("ViT-B/32",),
    config=CLIPConfig(embed_dim=512, image_size=224, vision_patch_size=32, vision_width=768,
                      vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8),
    description="OpenAI CLIP ViT-B/32 architecture (weights from a local file)",
))
VIT_B_16 = register(ModelRecord(
    name="ViT-B-16", family="clip", aliases=("ViT-B/16",),
    config=CLIPConfig(embed_dim=512, image_size=224, vision_patch_size=16, vision_width=768,
                      vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8),
    description="OpenAI CLIP ViT-B/16 architecture (weights from a local file)",
))
VIT_L_14 = register(ModelRecord(
    name="ViT-L-14", family="clip", aliases=("ViT-L/14",),
    config=CLIPConfig(embed_dim=768, image_size=224, vision_patch_size=14, vision_width=1024,
                      vision_layers=24, vision_heads=16, text_width=768, text_layers=12, text_heads=12),
    description="OpenAI CLIP ViT-L/14 architecture (weights from a local file)",
))
VIT_L_14_336 = register(ModelRecord(
    name="ViT-L-14-336", family="clip", aliases=("ViT-L/14@336px", "ViT-L/14@336", "ViT-L-14-336px"),
    config=CLIPConfig(embed_dim=768, image_size=336, vision_patch_size=14, vision_width=1024,
                      vision_layers=24, vision_heads=16, text_width=768, text_layers=12, text_heads=12),
    description="OpenAI CLIP ViT-L/14@336px architecture (weights from a local file)",
))
