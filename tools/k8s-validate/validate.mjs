// Validates Kubernetes objects of CRD kinds against the schemas of their
// CRDs, as compiled by kubernetes-models (Argo Rollouts, Gateway API, KEDA).
// stdin: a JSON array of objects. stdout: a JSON array, per object, of
// {kind, name, errors} where errors are the schema's complaints ([] = valid),
// or "unknown" when no model here knows the apiVersion and kind.
import * as argo from "@kubernetes-models/argo-rollouts";
import * as gateway from "@kubernetes-models/gateway-api";
import * as keda from "@kubernetes-models/keda";

function models(module) {
  const found = new Map();
  const walk = (node) => {
    for (const value of Object.values(node)) {
      if (typeof value === "function" && value.apiVersion && value.kind) {
        found.set(`${value.apiVersion}/${value.kind}`, value);
      } else if (value && typeof value === "object") {
        walk(value);
      }
    }
  };
  walk(module);
  return found;
}

const known = new Map([...models(argo), ...models(gateway), ...models(keda)]);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = JSON.parse(input).map((obj) => {
  const Model = known.get(`${obj.apiVersion}/${obj.kind}`);
  const result = { kind: obj.kind, name: obj.metadata?.name };
  if (!Model) return { ...result, errors: "unknown" };
  try {
    new Model(obj).validate();
    return { ...result, errors: [] };
  } catch (err) {
    const details = err.errors ?? [{ message: String(err.message ?? err) }];
    return {
      ...result,
      errors: details.map((e) => `${e.instancePath ?? ""} ${e.message ?? ""} ${JSON.stringify(e.params ?? {})}`.trim()),
    };
  }
});
process.stdout.write(JSON.stringify(out));
