"""Network definitions whose parameter names match the released FaceChain FACT checkpoints."""
