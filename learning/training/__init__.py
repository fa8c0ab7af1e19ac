"""LoRA training of small students: the run's spec, the CPU trainer (a child process in the engine's
environment) and its runner, and the stand-in task teacher with its scorers for the distillation proof."""
