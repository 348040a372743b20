"""CLIP-guided VQGAN generation ("VQGAN+CLIP"): prompts, batched generator, outputs."""
from vqclip.jobs.generate.cutouts import CutoutSpec
from vqclip.jobs.generate.generator import Generator, Job, StepEvent
from vqclip.jobs.generate.prompts import Prompt, parse_prompts
from vqclip.jobs.generate.settings import GenerateSettings

__all__ = ["CutoutSpec", "GenerateSettings", "Generator", "Job", "Prompt", "StepEvent", "parse_prompts"]
