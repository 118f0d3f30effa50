"""Settings and state changes of a running project: pause and resume, new parameters,
new hyperparameters, a new class. Each says what it voids: an iteration in flight (its
results become `late`, no strike), the audits of orders that ran other settings, the
screen's reference norms, the clients' parameter view."""

from __future__ import annotations

import numpy as np

from mlitb.master.config import Hyper
from mlitb.master.learning.aggregation import make_aggregator
from mlitb.master.project import membership
from mlitb.master.project.data import label_map_for
from mlitb.master.trust.verified import make_trust
from mlitb.model.cost import multiply_adds
from mlitb.model.grow import grow_outputs
from mlitb.model.layout import decay_multipliers
from mlitb.optim import Optimizer
from mlitb.protocol import messages as msg


def void_orders(e) -> None:
    """Forget the open iteration: results of orders already sent become `late` (no
    strike), and the next boundary orders again."""
    e.working = False
    e.outstanding = 0
    e.acc.reset()
    e.trust.step_failed()
    e.trust.step_closing("the iteration was voided (pause, restart or new settings)")
    for c in e.clients.values():
        c.orders.scheduled = None
        c.orders.pending.clear()


def set_state(e, state: str, now: float) -> None:
    e.state = state
    if state != "running" and e.working:
        e._void_orders()  # results of the interrupted iteration will be late
    e.next_start = now
    for cid in e.clients:
        e.send(cid, msg.state(state, e.iteration))
    e.changed()


def restart(e, params: np.ndarray, optimizer: Optimizer, now: float) -> None:
    """Re-initialised parameters and optimizer; iteration 0, history cleared."""
    e.params = np.ascontiguousarray(params, dtype=np.float32)
    e.optimizer = optimizer
    e.iteration = 0
    e.history = []
    e.counters.vectors = 0
    e._void_orders()
    e.trust.forget(0)
    e._broadcast(full=True)
    e.changed()
    e.next_start = now


def update_hyper(e, hyper: Hyper) -> None:
    old, old_algorithm = e.hyper, e.algorithm
    e.hyper = hyper
    if hyper.optimizer != old.optimizer or hyper.optimizer_params() != old.optimizer_params():
        e.optimizer = hyper.make_optimizer(e.spec.num_params)
    else:
        e.optimizer.schedule = hyper.schedule()
    e.algorithm = e._make_algorithm(old_algorithm)
    # the rule applies from this iteration's step, the bucket size from the next plan
    e.acc.aggregator = make_aggregator(hyper.aggregation, hyper.trim)
    e.acc.bucket_size = hyper.bucket_size
    if hyper.algorithm != old.algorithm or type(e.algorithm) is not type(old_algorithm):
        e._void_orders()  # orders in flight asked for the other algorithm's results (or dp turned on/off)
    if e.algorithm.voids_audits(old_algorithm) or hyper.verify != old.verify:
        e.trust.forget(e.iteration + 1)  # orders in flight ran the old settings
        if hyper.verify != old.verify:
            e.trust = make_trust(hyper, e.counters, e.clients, e.rng, e.name, e.trust)
            e.trust.forget(e.iteration + 1)
        e._remember()
    e.trust.settings_changed(hyper, e.algorithm.norm_settings() != old_algorithm.norm_settings())
    if hyper.compression != old.compression:
        e._broadcast(full=True)
    if hyper.browser_backend != old.browser_backend:  # tabs already training switch now
        for c in e.clients.values():
            if c.kind == "browser" and c.protocol >= 2:
                e.send(c.id, msg.settings(hyper.browser_backend))
    cap = membership.probation_items(e.clients, e.allocator)
    for c in e.clients.values():
        if c.id in e.allocator.capacity:
            c.share.limit = e._capacity(c)
            membership.set_share(c, e.allocator, cap)
    e.changed()


def grow_label(e, label: str, now: float) -> None:
    """Add a class: one more output neuron (old weights kept, the new row initialised
    as ConvNetJS does), optimizer state grown alike, every client gets the new model."""
    spec, params, insert = grow_outputs(e.spec, e.params, seed=e.hyper.seed + len(e.labels))
    optimizer = e.hyper.make_optimizer(spec.num_params)
    optimizer.t = e.optimizer.t
    for name, array in e.optimizer.state.items():
        optimizer.state[name] = insert(array)
    e.spec, e.params, e.optimizer = spec, params, optimizer
    e.credit.macs_per_vector = multiply_adds(spec)  # one more output: a vector costs a little more
    e.labels.append(label)
    e.l1_mul, e.l2_mul = decay_multipliers(spec)
    e.algorithm = e._make_algorithm()
    e.acc = e._accumulator(spec.num_params)
    e._void_orders()  # results for the old shape would not fit: start the iteration over
    e.trust.reset()
    e.trust.forget(e.iteration)
    for source in e.data.sources.values():
        source.label_map = label_map_for(e.labels, source.info.get("label_names", []))
    e.next_start = now
    e.changed()
    for cid in e.clients:
        e.send(cid, msg.model(spec.to_json(), e.labels, spec.num_params, e.iteration))
    e._broadcast(full=True)
