"""The paper's mathematics as pure functions on tensors (docs/method.md §2-4). Nothing here imports diffusers."""
