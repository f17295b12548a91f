"""Layer 2, training: the loop and its hooks, optimizers (SGD, Adam, ALI-G), late-phase
weights, SWA, data augmentation and the fast path's execution settings."""
