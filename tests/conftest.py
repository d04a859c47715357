import jax
import pytest

import sgm

SCHEDULES = {
    "linear": sgm.LinearSchedule(),
    "cosine": sgm.CosineSchedule(),
    "quadratic": sgm.QuadraticSchedule(),
    "sigmoid": sgm.SigmoidSchedule(),
    "scaled_linear": sgm.ScaledLinearSchedule(),
}


def all_sdes():
    """Every SDE with every schedule, as (id, sde) pairs."""
    out = [(f"vp-{n}", sgm.VPSDE(schedule=s)) for n, s in SCHEDULES.items()]
    out += [(f"subvp-{n}", sgm.SubVPSDE(schedule=s)) for n, s in SCHEDULES.items()]
    out.append(("ve", sgm.VESDE()))
    return out


SDES3 = {"vp": sgm.VPSDE(), "subvp": sgm.SubVPSDE(), "ve": sgm.VESDE()}


@pytest.fixture
def key():
    return jax.random.key(0)
