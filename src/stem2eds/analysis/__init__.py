"""Science on predicted and measured maps, after prediction (pure functions on arrays).

========================  ==========================================================
module                    what it does
========================  ==========================================================
:mod:`.calibrate`         correct a model's systematic offset: y = a * y_hat + b per element
:mod:`.sparse_eds`        sparse EDS: sampling patterns, interpolation, completion, dose saved
:mod:`.kriging`           universal kriging with the model's prediction as covariate
:mod:`.uncertainty`       ensemble mean/std, interval coverage, std rescaling
:mod:`.anomaly`           anomaly scores from reconstruction error and prediction error
========================  ==========================================================

None of these modules reads or writes files; the workflows in
:mod:`stem2eds.experiments` do.
"""
