"""scikit-learn's own estimator checks, every one of them."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from fastnn import MLPClassifier

# Checks that cannot apply, with the reason: none. Every check passes; the
# one that scikit-learn itself skips, check_array_api_input, runs only when
# SCIPY_ARRAY_API=1 is set and tests array-API inputs (torch, cupy arrays),
# which the estimator converts to numpy like any other input.
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks(
    [MLPClassifier(random_state=0, threads=2)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
