// Reference computations with the real ConvNetJS (npm convnetjs 0.3.0) for the tests.
// Reads one JSON request on stdin, writes one JSON answer on stdout.
//   {task: "train", layer_defs, data: {x, y, shape}, trainer: {...}, epochs}
//        -> {net: net.toJSON(), losses: [...]}
//   {task: "predict", net, x, shape}            -> {out: [[...], ...]}   (test mode)
//   {task: "gradients", net | (layer_defs, params), x, y, shape} -> {grad, loss} (summed over x)
//   {task: "train_step", net, x, y, shape, trainer} -> {net}            (one batch of len(x))
// x is a list of examples, each a flat list in Vol order ((sx*y)+x)*depth+d; shape = [sy, sx, depth].
"use strict";
const convnetjs = require("convnetjs");

function vol(flat, shape) {
  const [sy, sx, depth] = shape;
  const v = new convnetjs.Vol(sx, sy, depth, 0.0);
  for (let i = 0; i < flat.length; i++) v.w[i] = flat[i];
  return v;
}

function load(json) {
  const net = new convnetjs.Net();
  net.fromJSON(json);
  return net;
}

function build(defs, params) {
  const net = new convnetjs.Net();
  net.makeLayers(JSON.parse(JSON.stringify(defs)));
  let k = 0;
  for (const pg of net.getParamsAndGrads()) for (let j = 0; j < pg.params.length; j++) pg.params[j] = params[k++];
  if (k !== params.length) throw new Error("params: expected " + k + ", got " + params.length);
  return net;
}

function out(netObj) {
  // JSON.stringify writes typed arrays as {"0":..}; the Python side reads both forms.
  return JSON.parse(JSON.stringify(netObj));
}

const handlers = {
  train(req) {
    const net = new convnetjs.Net();
    net.makeLayers(req.layer_defs);
    const trainer = new convnetjs.Trainer(net, req.trainer);
    const losses = [];
    for (let e = 0; e < (req.epochs || 1); e++) {
      for (let i = 0; i < req.data.x.length; i++) {
        losses.push(trainer.train(vol(req.data.x[i], req.data.shape), req.data.y[i]).loss);
      }
    }
    return { net: out(net.toJSON()), losses };
  },
  predict(req) {
    const net = load(req.net);
    return { out: req.x.map((x) => Array.from(net.forward(vol(x, req.shape), false).w)) };
  },
  gradients(req) {
    // With layer_defs + params the net is built by makeLayers, not fromJSON: ConvNetJS's
    // MaxoutLayer.fromJSON sizes its switch array to group_size, which breaks its backward.
    const net = req.layer_defs ? build(req.layer_defs, req.params) : load(req.net);
    let loss = 0;
    for (let i = 0; i < req.x.length; i++) {
      net.forward(vol(req.x[i], req.shape), true);
      loss += net.backward(req.y[i]); // dw accumulates over examples, like a batch
    }
    const grad = [];
    for (const pg of net.getParamsAndGrads()) for (let j = 0; j < pg.grads.length; j++) grad.push(pg.grads[j]);
    return { grad, loss };
  },
  train_step(req) {
    const net = load(req.net);
    const trainer = new convnetjs.Trainer(net, Object.assign({}, req.trainer, { batch_size: req.x.length }));
    for (let i = 0; i < req.x.length; i++) trainer.train(vol(req.x[i], req.shape), req.y[i]);
    return { net: out(net.toJSON()) };
  },
};

let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const req = JSON.parse(input);
  const h = handlers[req.task];
  if (!h) throw new Error("unknown task " + req.task);
  process.stdout.write(JSON.stringify(h(req)));
});
