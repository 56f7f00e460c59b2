"""collab-llm: inject collaborative signal into a frozen large language model.

Stages (each reads only what the previous one wrote): assets -> data protocols -> CF backbones
-> prompts with soft tokens -> LoRA / iLoRA training under Lightning -> scoring -> bundles.
See docs/DESIGN.md.
"""

__version__ = "0.1.0"
