"""The paper's mathematics as pure functions on tensors (METHOD.md §2-4). Nothing here imports diffusers."""
