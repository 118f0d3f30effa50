/*
 * Inner optimizers of the `local_sgd` learning algorithm (DiLoCo-style local SGD), for
 * browser workers: a trainer takes INNER optimizer steps on its own cached data,
 * starting from the broadcast parameters, and returns its parameter change.
 *
 * Every rule is the NumPy one of mlitb/optim/methods.py (and the decay of
 * mlitb/model/decay.py) in float32 arithmetic: each intermediate is rounded with
 * Math.fround, in the NumPy code's order of operations, so the results are the
 * Python ones bit for bit (tests/test_inner_golden.py checks it). One double-rounded
 * float32 operation (+, -, *, /, sqrt of float32 operands in double, then fround) is
 * exactly the float32 operation, which is what makes that possible.
 *
 *   MlitbInner.decayMultipliers(layers) -> {l1: Float32Array, l2: Float32Array, state}
 *       per-parameter decay multipliers of an expanded spec (mlitb.model.layout.
 *       decay_multipliers): conv/fc weights get the layer's l1_decay_mul/l2_decay_mul
 *       (1 when absent, as for expanded layers), biases 0; `state`: batchnorm's running
 *       statistics ({idx, rate} or null), which every step moves by state - rate x the
 *       mean gradient whatever the optimizer (docs/model.md, "State that is not trained").
 *   MlitbInner.meanGradient(out, summed, n, params, l1, l2, mul) -> out
 *       (summed + decay) / n into `out` (mlitb.model.decay.mean_gradient).
 *   new MlitbInner.InnerOptimizer(cfg, numParams)      (`new` optional)
 *       cfg: a work order's `inner` object {optimizer: "sgd" | "adam", learning_rate,
 *       momentum, beta1, beta2, eps, batch_size, l1_decay, l2_decay}; absent fields
 *       take the native worker's defaults (mlitb/model/inner.py: optimizer adam,
 *       momentum 0 = plain SGD, beta1 0.9, beta2 0.999, eps 1e-8; learning_rate 0.01,
 *       no decay). The master's work orders spell every field out.
 *     .step(params, summedGrad, n, mul)   one step, params changed in place; mul is
 *       decayMultipliers(...) (needed only with l1/l2 decay). Throws, changing
 *       nothing, on a NaN/Inf mean gradient (as mlitb.optim refuses it).
 *     .sameConfig(cfg) -> bool            same inner settings, batch_size aside (as the
 *       native worker compares them): the state may be kept
 *     .reset()                            step count and state back to zero
 *     .t, .state, .config, .batchSize, .numParams
 *   new MlitbInner.LocalRound(engine, opt, start, mul)  (`new` optional)
 *     await .batch(x, y, n, train = true) engine.setParams(params), engine.gradient, opt.step
 *     .delta() -> Float32Array           start - params, float32
 *     .params, .vectors, .loss (summed), .steps
 * A classic script (self.MlitbInner in workers) and a CommonJS module (node tests).
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.MlitbInner = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const fround = Math.fround;

  // the optimizer's hyperparameters besides the learning rate, with the native worker's defaults
  const HYPER = {
    sgd: { momentum: 0 },
    adam: { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
  };
  const UNIT = ["momentum", "beta1", "beta2"]; // must lie in [0, 1)

  // the layout (engine/layout.js) gives the multipliers and batchnorm's state rates
  const layout = () => (typeof module === "object" && module.exports ? require("./layout.js") : self.MlitbLayout);

  function decayMultipliers(layers) {
    return layout().multipliers(layers);
  }

  /** (summed + l2*l2_mul*p + l1*l1_mul*sign(p)) / n, float32, as mlitb.model.decay.mean_gradient. */
  function meanGradient(out, summed, n, params, l1, l2, mul) {
    if (!(n > 0)) throw new Error(`count must be positive to average a gradient, got ${n}`);
    const N = summed.length;
    const fn = fround(n);
    if (l1 || l2) {
      if (!mul || !mul.l1 || !mul.l2) {
        throw new Error("l1/l2 decay needs the spec's decay multipliers (decayMultipliers)");
      }
      const f1 = fround(l1), f2 = fround(l2), m1 = mul.l1, m2 = mul.l2;
      if (m1.length !== N || m2.length !== N) {
        throw new Error(`decay multipliers are for ${m1.length} parameters, the gradient has ${N}`);
      }
      for (let i = 0; i < N; i++) {
        const p = params[i];
        let d = 0; // decay_gradient's zeros, then its += terms
        if (l2) d = fround(d + fround(fround(f2 * m2[i]) * p));
        if (l1) d = fround(d + fround(fround(f1 * m1[i]) * (p > 0 ? 1 : -1)));
        out[i] = fround(fround(summed[i] + d) / fn);
      }
    } else {
      for (let i = 0; i < N; i++) out[i] = fround(summed[i] / fn);
    }
    return out;
  }

  function num(cfg, key, dflt) {
    const v = cfg[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      throw new Error(`inner optimizer: ${key} must be a finite number >= 0, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  /** The inner settings with defaults filled in; unknown fields kept (as sorted JSON) for comparison. */
  function normalize(cfg) {
    cfg = cfg || {};
    const name = cfg.optimizer === undefined || cfg.optimizer === null ? "adam" : cfg.optimizer;
    if (!Object.prototype.hasOwnProperty.call(HYPER, name)) {
      throw new Error(`inner optimizer: unknown optimizer ${JSON.stringify(name)}; use sgd or adam`);
    }
    const out = {
      optimizer: name,
      learning_rate: num(cfg, "learning_rate", 0.01),
      batch_size: num(cfg, "batch_size", 0),
      l1_decay: num(cfg, "l1_decay", 0),
      l2_decay: num(cfg, "l2_decay", 0),
    };
    for (const [k, d] of Object.entries(HYPER[name])) {
      out[k] = num(cfg, k, d);
      if (UNIT.includes(k) && out[k] >= 1) throw new Error(`inner optimizer: ${k} must be in [0, 1), got ${out[k]}`);
      if (k === "eps" && out[k] === 0) throw new Error("inner optimizer: eps must be > 0, got 0");
    }
    const known = new Set(["optimizer", "learning_rate", "batch_size", "l1_decay", "l2_decay",
      "momentum", "beta1", "beta2", "eps"]);
    const extra = Object.keys(cfg).filter((k) => !known.has(k)).sort();
    out.extra = JSON.stringify(extra.map((k) => [k, cfg[k]]));
    return out;
  }

  // the batch size does not enter the update rule: a change keeps the state
  function sameNormalized(a, b) {
    const ka = Object.keys(a).filter((k) => k !== "batch_size"), kb = Object.keys(b).filter((k) => k !== "batch_size");
    return ka.length === kb.length && ka.every((k) => a[k] === b[k]);
  }

  function InnerOptimizer(cfg, numParams) {
    if (!(this instanceof InnerOptimizer)) return new InnerOptimizer(cfg, numParams);
    if (!Number.isInteger(numParams) || numParams < 0) throw new Error(`bad parameter count ${numParams}`);
    this.config = normalize(cfg);
    this.numParams = numParams;
    this.batchSize = this.config.batch_size;
    this._g = new Float32Array(numParams);
    this.reset();
  }

  InnerOptimizer.prototype.reset = function () {
    this.t = 0; // steps taken
    this.state = this.config.optimizer === "adam"
      ? { m: new Float32Array(this.numParams), v: new Float32Array(this.numParams) }
      : { v: new Float32Array(this.numParams) };
  };

  InnerOptimizer.prototype.sameConfig = function (cfg) {
    try {
      return sameNormalized(this.config, normalize(cfg));
    } catch (e) {
      return false;
    }
  };

  /** The learning rate of the next step (a constant schedule), as float32. */
  InnerOptimizer.prototype.lr = function () {
    return fround(this.config.learning_rate);
  };

  InnerOptimizer.prototype.step = function (p, summedGrad, n, mul) {
    const N = this.numParams, c = this.config;
    if (p.length !== N || summedGrad.length !== N) {
      throw new Error(`inner ${c.optimizer}: expected ${N} parameters and gradient, got ${p.length} and ${summedGrad.length}`);
    }
    const g = meanGradient(this._g, summedGrad, n, p, c.l1_decay, c.l2_decay, mul);
    for (let i = 0; i < N; i++) {
      if (!Number.isFinite(g[i])) {
        throw new Error(`inner ${c.optimizer}: gradient contains NaN or Inf; step refused`);
      }
    }
    const st = mul && mul.state; // state that is not trained: kept, then moved by its own rule
    const kept = st ? Float32Array.from(st.idx, (i) => p[i]) : null;
    const lr = this.lr();
    if (c.optimizer === "sgd") {
      // dx = momentum * v - lr * g; v = dx; p += dx (plain SGD when momentum is 0)
      const m = fround(c.momentum);
      if (m === 0) {
        for (let i = 0; i < N; i++) p[i] = fround(p[i] - fround(lr * g[i]));
      } else {
        const v = this.state.v;
        for (let i = 0; i < N; i++) {
          const vi = fround(fround(v[i] * m) - fround(lr * g[i]));
          v[i] = vi;
          p[i] = fround(p[i] + vi);
        }
      }
    } else {
      // Adam, Kingma & Ba's bias correction: p -= lr * m_hat / (sqrt(v_hat) + eps)
      const b1 = fround(c.beta1), b2 = fround(c.beta2), eps = fround(c.eps);
      const a1 = fround(1 - b1), a2 = fround(1 - b2);
      const t = this.t + 1;
      const c1 = fround(1 - Math.pow(b1, t)), c2 = fround(1 - Math.pow(b2, t)); // double, then float32
      const M = this.state.m, V = this.state.v;
      for (let i = 0; i < N; i++) {
        const gi = g[i];
        const mi = fround(fround(M[i] * b1) + fround(a1 * gi));
        const vi = fround(fround(V[i] * b2) + fround(fround(a2 * gi) * gi));
        M[i] = mi;
        V[i] = vi;
        const mh = fround(mi / c1), vh = fround(vi / c2);
        p[i] = fround(p[i] - fround(fround(lr * mh) / fround(fround(Math.sqrt(vh)) + eps)));
      }
    }
    if (st) for (let j = 0; j < st.idx.length; j++) p[st.idx[j]] = fround(kept[j] - fround(st.rate[j] * g[st.idx[j]]));
    this.t += 1;
    return p;
  };

  /**
   * One local round: inner steps from `start` (never changed), one per batch, each on
   * the current parameters. engine: the TF.js engine (setParams, gradient);
   * opt: an InnerOptimizer; mul: decayMultipliers of the spec (or null without decay).
   */
  function LocalRound(engine, opt, start, mul) {
    if (!(this instanceof LocalRound)) return new LocalRound(engine, opt, start, mul);
    if (start.length !== opt.numParams) {
      throw new Error(`local round: ${start.length} parameters, the optimizer has ${opt.numParams}`);
    }
    this.engine = engine;
    this.opt = opt;
    this.mul = mul || null;
    this.start = start;
    this.params = Float32Array.from(start);
    this.vectors = 0;
    this.loss = 0;
    this.steps = 0;
  }

  /** One inner step on a batch (x, y, n as engine.gradient takes them); returns its summed loss. */
  LocalRound.prototype.batch = async function (x, y, n, train = true) {
    this.engine.setParams(this.params); // the parameters change every step
    const r = await this.engine.gradient(x, y, n, train);
    this.opt.step(this.params, r.grad, n, this.mul);
    this.vectors += n;
    this.loss += r.loss;
    this.steps += 1;
    return r.loss;
  };

  /** start - params, float32: the change this round sends back (frame type 3). */
  LocalRound.prototype.delta = function () {
    const d = new Float32Array(this.start.length);
    for (let i = 0; i < d.length; i++) d[i] = fround(this.start[i] - this.params[i]);
    return d;
  };

  return { decayMultipliers, meanGradient, normalize, InnerOptimizer, LocalRound };
});
