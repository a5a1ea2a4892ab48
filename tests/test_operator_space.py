"""The operator-space study's scores are the influence it says they are (benchmarks/operator_space.py)."""

import numpy as np
import torch

from benchmarks.operator_space import _features, _scores
from benchmarks.settings import build_setting


def test_the_converged_score_at_full_rank_is_the_last_layers_influence_in_the_models_own_weights():
    # With every direction kept, the principal-axis basis is an invertible change of the last layer's coordinates, and
    # an inverse-curvature score does not depend on coordinates; so it must equal g_q · G⁻¹ g_i with the gradients and
    # Gauss-Newton matrix taken by autograd with respect to the head's own weight and bias.
    setting = build_setting("cancer", "smoke")
    train, queries = _features(setting)
    width = train[0].shape[1]
    [(_, _, first), (_, _, converged)] = list(_scores(train, queries, width, dampings=(1e-9,)))

    head = setting.model()[-1].double()
    params = [head.weight, head.bias]

    def gradients(h, y):
        rows = []
        for k in range(len(h)):
            loss = torch.nn.functional.cross_entropy(head(h[k : k + 1]), y[k : k + 1].argmax(1))
            weight, bias = torch.autograd.grad(loss, params)
            rows.append(torch.cat([weight, bias[:, None]], 1).reshape(-1))  # class-major, the bias last in each class
        return torch.stack(rows)

    (ht, pt, yt), (hq, pq, yq) = train, queries
    gt, gq = gradients(ht, yt), gradients(hq, yq)
    inputs = torch.cat([ht, torch.ones(len(ht), 1, dtype=torch.float64)], 1)  # the head's input, with its bias
    gram = sum(torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(x, x)) for p, x in zip(pt, inputs)) / len(ht)
    expected = (gq @ torch.linalg.pinv(gram, hermitian=True, rtol=1e-10) @ gt.T).detach().numpy()
    assert np.corrcoef(converged.ravel(), expected.ravel())[0, 1] > 0.999
    # the first-order score does depend on the coordinates: it is a different ranking, not a rescaling
    assert np.corrcoef(first.ravel(), expected.ravel())[0, 1] < 0.99
