"""OpenPose annotator (body, hand, face) equal to controlnet_aux 0.0.6 `OpenposeDetector`.

Plain torch + numpy + cv2. Load with `OpenposeAnnotator.from_dir(folder)` where `folder` holds
body_pose_model.pth, hand_pose_model.pth and facenet.pth (registry `openpose_annotator`).
"""

from facechain.annotators.openpose.annotator import OpenposeAnnotator
from facechain.annotators.openpose.draw import draw_poses
from facechain.annotators.openpose.model import BodyPoseNet, FaceNet, HandPoseNet
from facechain.annotators.openpose.results import BodyResult, Keypoint, PoseResult

__all__ = [
    "BodyPoseNet",
    "BodyResult",
    "FaceNet",
    "HandPoseNet",
    "Keypoint",
    "OpenposeAnnotator",
    "PoseResult",
    "draw_poses",
]
