"""Training: the loop pieces both trainers share (loop), the Patch-DM trainer (patchdm), the latent-DDPM trainer
(latent), the random draws of a step (draws), the EMA (ema) and resuming (resume)."""
