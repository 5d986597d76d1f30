"""Rate functions ``r = f(v)``, each in the three forms the engines need. To add one, add its entry here and
its name to :data:`nn4n.recurrence.ACTIVATIONS` (and a branch to the Triton kernels for that engine)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import ACTIVATIONS

aten = torch.ops.aten


@dataclass(frozen=True)
class RateFunction:
    f: Callable[[torch.Tensor], torch.Tensor]  # with autograd
    into: Callable[[torch.Tensor, torch.Tensor], None]  # out = f(v), allocating nothing (out may be a strided slice)
    times_derivative: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]  # grad *= f'(v) in place, from r = f(v) and v
    kink: float | None = None  # where f' jumps (relu, retanh: 0)
    ceiling: float | None = None  # the bound |f| approaches (tanh, sigmoid, retanh: 1); None where unbounded
    outer: Callable[[torch.Tensor], torch.Tensor] | None = None  # f = outer(relu(v)) for a rate function with a kink

    def smoothed(self, v: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``f`` with its kink rounded off, and its derivative: ``outer(softplus(beta v) / beta)``; sharper as
        ``beta`` grows (the fixed-point search follows roots from smooth to sharp)."""
        soft = F.softplus(v, beta=beta)
        x = soft.clone().requires_grad_(True)
        with torch.enable_grad():
            y = self.outer(x)
            (slope,) = torch.autograd.grad(y.sum(), x)
        return y.detach(), slope * torch.sigmoid(beta * v)


def _relu_into(v: torch.Tensor, out: torch.Tensor) -> None:
    torch.clamp_min(v, 0, out=out)


def _relu_derivative(grad: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> None:
    aten.threshold_backward.grad_input(grad, r, 0, grad_input=grad)  # r > 0 exactly where v > 0


def _tanh_derivative(grad: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> None:
    aten.tanh_backward.grad_input(grad, r, grad_input=grad)


def _retanh_into(v: torch.Tensor, out: torch.Tensor) -> None:
    _relu_into(v, out)
    out.tanh_()


def _retanh_derivative(grad: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> None:
    _tanh_derivative(grad, r, v)
    _relu_derivative(grad, r, v)


RATES: dict[str, RateFunction] = {
    "relu": RateFunction(F.relu, _relu_into, _relu_derivative, kink=0.0, outer=lambda x: x),
    "tanh": RateFunction(torch.tanh, lambda v, out: torch.tanh(v, out=out), _tanh_derivative, ceiling=1.0),
    "softplus": RateFunction(F.softplus, lambda v, out: torch._C._nn.softplus(v, 1, 20, out=out),
                             lambda grad, r, v: aten.softplus_backward.grad_input(grad, v, 1, 20, grad_input=grad)),
    "sigmoid": RateFunction(torch.sigmoid, lambda v, out: torch.sigmoid(v, out=out),
                            lambda grad, r, v: aten.sigmoid_backward.grad_input(grad, r, grad_input=grad), ceiling=1.0),
    "retanh": RateFunction(lambda v: torch.tanh(F.relu(v)), _retanh_into, _retanh_derivative, kink=0.0, ceiling=1.0,
                           outer=torch.tanh),
}
assert tuple(RATES) == ACTIVATIONS, "every name in nn4n.recurrence.ACTIVATIONS has its entry here, in that order"
