"""Annotator networks FaceChain runs beside the generator (FairFace, OpenPose, upscaler)."""
