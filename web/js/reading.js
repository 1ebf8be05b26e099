// From the model's logits and the gate's verdict to the outcome and its words: a port of
// pneumonia.modeling.Classifier.read (calibration, threshold, uncertain band) whose words are the
// server's own templates (pneumonia.words.browser_templates, served as model/words.json).

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
    this.band = config.uncertain_band ?? 0.0;
    this.words = words;
  }

  read(logits, verdict) {
    // Classifier._reading: the gate's verdict, then the band; the decision follows the threshold.
    const values = calibratedProbabilities(logits, this.temperature);
    const probabilities = Object.fromEntries(this.labels.map((name, i) => [name, values[i]]));
    const p = probabilities[this.positive];
    let outcome = verdict.outcome;
    if (outcome !== "refuse" && this.band > 0 && Math.abs(p - this.threshold) <= this.band) outcome = "uncertain";
    const refused = outcome === "refuse", uncertain = outcome === "uncertain";
    const decision = refused || uncertain ? null : p >= this.threshold ? this.positive : this.negative;
    return { probabilities, outcome, kind: verdict.kind, decision, scores: verdict.scores,
      text: this.text(outcome, verdict.kind, p >= this.threshold ? this.positive : this.negative, p) };
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
