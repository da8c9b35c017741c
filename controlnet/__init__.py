"""The control-image side of ControlNet, numpy and PIL only: control images
from depth maps, normals and edges (`control_images`), fitting them to an
output size (`sizing`), the structure-fidelity metric (`structure`) and
depth estimation from photos (`depth_estimation`). The model itself is
`kcv_sd.controlnet.ControlNet`.
"""
