"""Names of the quality columns, one `q_*` each (the filter stage thresholds them), without torch: curation
and export read them in processes that never load a model.

Meaning and direction of each column:
- q_finite: 1 if the generated image had no NaN/Inf, else 0.
- q_face_fraction: detected box area / image area (bigger = closer face).
- q_roll: eye-line angle in degrees (0 = level; sign follows image y down).
- q_eye_distance: inter-ocular distance / box width (small = profile or bad landmarks).
- q_nose_position: nose x between the eyes, 0 = on the left eye, 1 = on the right eye (0.5 = frontal).
- q_landmarks_inside: 1 if all five landmarks lie inside the box.
- q_align_residual: RMS distance of the fitted landmarks to the template / crop size (lower = better).
- q_sharpness: variance of the Laplacian of the aligned crop's luminance, 0-255 scale (higher = sharper).
- q_brightness: mean luminance of the crop's centre, 0-1.
- q_clipped: fraction of the crop's centre that is black (<= 2) or blown out (>= 253).
- q_serfiq: SER-FIQ quality in (0, 1], stability of the embedding under dropout (higher = better).
- q_disc: the StyleGAN discriminator's realism logit (higher = more real); NaN without a discriminator.
  Scored per sample (minibatch-std over a group of one) so it does not depend on the batch.

Artifact scores (only with `artifacts.scorers`; higher = more suspicious; pipeline/faces/artifacts.py):
- q_catchlight_mismatch: the eyes' highlights differ (one-sided, or apart within the iris), 0-1; 0 when neither has one.
- q_droplet: strongest compact bright blob on the face and hair (eyes and mouth left out), 0-1 of full scale.
- q_background_structure: strongest local contrast in the background away from the head, 0-1 (std / 255).
- q_accessory_asymmetry: left/right mismatch of glasses rims or earrings about the face's axis, 0-1.
"""

QUALITY_COLUMNS = (
    "q_finite", "q_face_fraction", "q_roll", "q_eye_distance", "q_nose_position",
    "q_landmarks_inside", "q_align_residual", "q_sharpness", "q_brightness", "q_clipped", "q_serfiq", "q_disc",
)  # fmt: skip

#: Artifact scorer name (`artifacts.scorers`) -> its column, in the order the device stacks them.
ARTIFACT_COLUMNS = {
    "catchlights": "q_catchlight_mismatch",
    "droplets": "q_droplet",
    "background": "q_background_structure",
    "accessories": "q_accessory_asymmetry",
}
#: Documented thresholds for the artifact rules (`filter.max_*`, off until set), measured on smoke renders and the
#: real photographs at hand (bench/artifacts.py, docs/artifacts.md); not measured on NVIDIA's weights.
SUGGESTED_THRESHOLDS = {
    "q_catchlight_mismatch": 0.95,
    "q_droplet": 0.3,
    "q_background_structure": 0.45,
    "q_accessory_asymmetry": 0.4,
}
