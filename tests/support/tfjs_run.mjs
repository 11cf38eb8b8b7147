// Runs TF.js graph models on the cpu backend for the converter's parity tests
// (tests/test_tfjs_convert.py, benchmarks/tfjs_parity.py).
//
//   node tfjs_run.mjs REQUEST.json
//
// REQUEST.json: {"modules": "<dir holding node_modules/@tensorflow/tfjs>",
//                "jobs": [{"model": "<model.json>", "input": "<name>", "file": "<raw f32>",
//                          "shape": [n, h, w, c], "outputs": ["age_pred/Softmax", ...],
//                          "out": "<dir>"}]}
// Each job's model is loaded from memory (tf.io.fromMemory: topology, weight specs and
// the manifest's weight files concatenated, read next to model.json), run on the input
// (little-endian float32), and each output written to OUT/<k>.f32 with OUT/outputs.json
// listing [{name, shape, dtype}]. Nothing is fetched from the network.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const require = createRequire(path.join(path.resolve(request.modules), 'package.json'));
const tf = require('@tensorflow/tfjs');

await tf.setBackend('cpu');
await tf.ready();

const cache = new Map();
async function load(modelPath) {
  if (cache.has(modelPath)) return cache.get(modelPath);
  const json = JSON.parse(readFileSync(modelPath, 'utf8'));
  const dir = path.dirname(modelPath);
  const specs = [];
  const buffers = [];
  for (const group of json.weightsManifest || []) {
    for (const spec of group.weights) specs.push(spec);
    for (const p of group.paths) buffers.push(readFileSync(path.join(dir, p)));
  }
  const joined = Buffer.concat(buffers);
  const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: json.modelTopology,
    weightSpecs: specs,
    weightData,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
    signature: json.signature,
    userDefinedMetadata: json.userDefinedMetadata,
  }));
  cache.set(modelPath, model);
  return model;
}

for (const job of request.jobs) {
  const model = await load(job.model);
  const raw = readFileSync(job.file);
  const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor(values, job.shape, 'float32');
  let results = model.execute({ [job.input]: input }, job.outputs);
  if (!Array.isArray(results)) results = [results];
  mkdirSync(job.out, { recursive: true });
  const listing = [];
  for (let k = 0; k < results.length; k++) {
    const t = results[k];
    const data = await t.data();
    const f32 = Float32Array.from(data);
    writeFileSync(path.join(job.out, `${k}.f32`), Buffer.from(f32.buffer));
    listing.push({ name: job.outputs[k], shape: t.shape, dtype: t.dtype });
    t.dispose();
  }
  input.dispose();
  writeFileSync(path.join(job.out, 'outputs.json'), JSON.stringify(listing));
}
