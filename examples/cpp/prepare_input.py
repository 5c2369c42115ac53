"""Write an image (or the bundled cat photo) as the raw float32 NCHW file deploycam_cam reads.

    python examples/cpp/prepare_input.py [IMAGE] OUT.f32      # prints N C H W
"""

import os
import sys

from explainer.imaging import Preprocess, load_image, sample_images

args = sys.argv[1:]
image = load_image(args[0]) if len(args) > 1 else sample_images()["chelsea"]
x, _ = Preprocess()(image)
os.makedirs(os.path.dirname(os.path.abspath(args[-1])), exist_ok=True)
x.unsqueeze(0).numpy().astype("<f4").tofile(args[-1])
print(1, *x.shape)
