"""Training, for every model family: the one loop (loop: Task, Trainer, LoopSettings), the run folder (run), the
checkpoint format (checkpoint), loss bookkeeping (meter), the EMA (ema) and what a resumed run may change (resume)."""
