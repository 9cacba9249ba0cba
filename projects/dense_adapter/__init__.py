"""DenseAdapter: MaskCLIP's dense CLIP embeddings with a trained residual adapter
(docs/new_student.md walks through it)."""
