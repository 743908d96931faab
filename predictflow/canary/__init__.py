"""Canary decisions, shared by both canary paths (k8s/README.md).

- `checks`: the checks (`judge`), their PromQL, and the Argo Rollouts
  AnalysisTemplate written from the same queries.
- `plan`: replica and HTTPRoute arithmetic of each step.
- `aliases`: which registry versions a canary compares, and the `champion`
  move at 100 %.

`scripts/canary_promote.py` (clusters without Argo Rollouts) reads each
track's figures with `checks.track_queries` and decides with `checks.judge`;
the Argo Rollouts overlay's `AnalysisTemplate`
(k8s/overlays/argo-rollouts/analysistemplate.yaml) is
`checks.analysis_template()`, the same checks as one PromQL query and one
success condition each (a test keeps the YAML equal to it).
"""
