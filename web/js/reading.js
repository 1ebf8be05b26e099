// From the model's logits and the gate's verdict to the outcome and its words: a port of
// pneumonia.modeling.Classifier.read (calibration, the answer cut-offs of the default level) whose words
// are the server's own templates (pneumonia.words.browser_templates, served as model/words.json).

export function calibratedProbabilities(logits, temperature) {
  // pneumonia.modeling.calibrated_probabilities: softmax of logits / T, in float64.
  const scaled = Array.from(logits, (z) => z / temperature);
  const top = Math.max(...scaled);
  const exps = scaled.map((z) => Math.exp(z - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

export class Reader {
  constructor(config, words) {
    this.labels = config.label_names || ["NORMAL", "PNEUMONIA"];
    this.positive = config.positive_label || "PNEUMONIA";
    this.negative = this.labels.find((name) => name !== this.positive);
    this.threshold = config.threshold ?? 0.5;
    this.temperature = config.temperature ?? 1.0;
    [this.normalAtMost, this.pneumoniaAtLeast] = answerCutoffs(config);
    this.words = words;
  }

  side(p) {
    // pneumonia.answering.Cutoffs.sides: NORMAL at or below one cut-off, PNEUMONIA at or above the other.
    if (this.pneumoniaAtLeast !== null && p >= this.pneumoniaAtLeast) return this.positive;
    if (this.normalAtMost !== null && p <= this.normalAtMost) return this.negative;
    return null;
  }

  read(logits, verdict) {
    // Classifier._reading: the gate's verdict, then the cut-offs; an answered film's decision is its side.
    const values = calibratedProbabilities(logits, this.temperature);
    const probabilities = Object.fromEntries(this.labels.map((name, i) => [name, values[i]]));
    const p = probabilities[this.positive];
    const side = this.side(p);
    let outcome = verdict.outcome;
    if (outcome !== "refuse" && side === null) outcome = "uncertain";
    const decision = outcome === "refuse" || outcome === "uncertain" ? null : side;
    return { probabilities, outcome, kind: verdict.kind, decision, scores: verdict.scores,
      text: this.text(outcome, verdict.kind, decision, p) };
  }

  refusal(verdict) {
    // A refusal before the model runs (the image checks): no probabilities.
    return { probabilities: null, outcome: "refuse", kind: verdict.kind, decision: null, scores: verdict.scores,
      text: this.words.refuse[verdict.kind] };
  }

  text(outcome, kind, side, p) {
    const words = this.words, adult = kind === "adult" ? "_adult" : "";
    const template = outcome === "refuse" ? words.refuse[kind]
      : outcome === "uncertain" ? words[`uncertain${adult}`] : words[`answer${adult}`][side];
    return template.replaceAll(words.p_slot, p.toFixed(3));
  }
}

export function answerCutoffs(config) {
  // pneumonia.answering.levels_from_config, the default level: [NORMAL at or below, PNEUMONIA at or above].
  if (config.answer_cutoffs?.length) {
    const level = config.answer_level ?? Math.max(...config.answer_cutoffs.map((row) => row.level));
    const row = config.answer_cutoffs.find((candidate) => candidate.level === level);
    if (!row) throw new Error(`config.json: answer_level ${level} is not one of its answer_cutoffs' levels`);
    return [row.normal_at_most, row.pneumonia_at_least];
  }
  const threshold = config.threshold ?? 0.5, band = config.uncertain_band ?? 0.0;
  // No band: the threshold decides (NORMAL strictly below it), as threshold_only does.
  return band > 0 ? [threshold - band, threshold + band] : [nextDown(threshold), threshold];
}

function nextDown(x) {
  // The largest double below a positive x (NumPy's nextafter(x, -inf)).
  const value = new Float64Array([x]);
  new BigInt64Array(value.buffer)[0] -= 1n;
  return value[0];
}
