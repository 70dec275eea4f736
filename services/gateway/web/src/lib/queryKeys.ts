/** One query key per API resource, shared by every feature so a change in one place
 * (a run started from the editor) refreshes the views that show it elsewhere. */
export const queryKeys = {
  me: ["auth", "me"] as const,
  providers: ["auth", "providers"] as const,
  limits: ["limits"] as const,
  methods: ["methods"] as const,
  tokens: ["tokens"] as const,
  experiments: ["experiments"] as const,
  experimentList: (params: object) => ["experiments", "list", params] as const,
  experiment: (id: string) => ["experiments", "detail", id] as const,
  runs: ["runs"] as const,
  runList: (params: object) => ["runs", "list", params] as const,
  run: (id: string) => ["runs", "detail", id] as const,
  runResults: (id: string) => ["runs", "results", id] as const,
  validations: (id: string) => ["runs", "validations", id] as const,
  predictions: (id: string, params: object) => ["runs", "predictions", id, params] as const,
  predictionEpochs: (id: string) => ["runs", "prediction-epochs", id] as const,
  estimate: (body: object) => ["estimate", body] as const,
};
