// Command argo-eval decides analysis measurements the way Argo Rollouts does,
// so tests can check the AnalysisTemplate's conditions on real Prometheus
// answers (tests/integration/test_canary_analysis.py).
//
// The rules are Argo Rollouts' (utils/evaluate/evaluate.go, v1.8): the
// condition is an expr-lang/expr expression over `result` with Argo's helper
// functions; a Prometheus vector arrives as []float64 of its samples' values,
// a scalar as float64 (metricproviders/prometheus). With both conditions,
// failure wins, and neither true is Inconclusive; with one, the other is its
// negation; an expression that cannot run (result[0] of an empty vector, a
// non-bool) is an Error.
//
// stdin: a JSON array of {"result": [numbers] or number, "success": "...",
// "failure": "..."}; NaN and infinities as the strings "NaN", "+Inf", "-Inf".
// stdout: a JSON array of {"phase": "Successful"|"Failed"|"Inconclusive"|
// "Error", "error": "..."}.
package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"reflect"
	"strconv"

	"github.com/expr-lang/expr"
)

type measurement struct {
	Result  json.RawMessage `json:"result"`
	Success string          `json:"success"`
	Failure string          `json:"failure"`
}

type verdict struct {
	Phase string `json:"phase"`
	Error string `json:"error,omitempty"`
}

func number(raw any) (float64, error) {
	switch v := raw.(type) {
	case float64:
		return v, nil
	case string:
		return strconv.ParseFloat(v, 64)
	}
	return 0, fmt.Errorf("not a number: %v", raw)
}

// decode turns the JSON result into what Argo's Prometheus provider passes.
func decode(raw json.RawMessage) (any, error) {
	var value any
	if err := json.Unmarshal(raw, &value); err != nil {
		return nil, err
	}
	if list, ok := value.([]any); ok {
		out := make([]float64, 0, len(list))
		for _, item := range list {
			f, err := number(item)
			if err != nil {
				return nil, err
			}
			out = append(out, f)
		}
		return out, nil
	}
	return number(value)
}

func asInt(in any) int64 {
	switch v := in.(type) {
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			panic(err)
		}
		return n
	case float64:
		return int64(v)
	case int:
		return int64(v)
	case int64:
		return v
	}
	panic(fmt.Sprintf("asInt: unsupported %T", in))
}

func asFloat(in any) float64 {
	switch v := in.(type) {
	case string:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			panic(err)
		}
		return f
	case float64:
		return v
	case int:
		return float64(v)
	case int64:
		return float64(v)
	}
	panic(fmt.Sprintf("asFloat: unsupported %T", in))
}

func isNil(in any) bool {
	if in == nil {
		return true
	}
	v := reflect.ValueOf(in)
	switch v.Kind() {
	case reflect.Ptr, reflect.Map, reflect.Slice, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// evalCondition is Argo's EvalCondition: the env and the bool check.
func evalCondition(result any, condition string) (bool, error) {
	env := map[string]any{
		"result":  result,
		"asInt":   asInt,
		"asFloat": asFloat,
		"isNaN":   math.IsNaN,
		"isInf":   func(f float64) bool { return math.IsInf(f, 0) },
		"isNil":   isNil,
		"default": func(in, def any) any {
			if isNil(in) {
				return def
			}
			return in
		},
	}
	program, err := expr.Compile(condition, expr.Env(env))
	if err != nil {
		return false, err
	}
	output, err := expr.Run(program, env)
	if err != nil {
		return false, err
	}
	b, ok := output.(bool)
	if !ok {
		return false, fmt.Errorf("expected bool, but got %T", output)
	}
	return b, nil
}

// evaluateResult is Argo's EvaluateResult.
func evaluateResult(result any, success, failure string) (string, error) {
	successTrue, failureTrue := false, false
	var err error
	if success != "" {
		if successTrue, err = evalCondition(result, success); err != nil {
			return "Error", err
		}
	}
	if failure != "" {
		if failureTrue, err = evalCondition(result, failure); err != nil {
			return "Error", err
		}
	}
	switch {
	case success == "" && failure == "":
		return "Successful", nil
	case success != "" && failure == "":
		failureTrue = !successTrue
	case success == "" && failure != "":
		successTrue = !failureTrue
	}
	if failureTrue {
		return "Failed", nil
	}
	if !successTrue {
		return "Inconclusive", nil
	}
	return "Successful", nil
}

func main() {
	var input []measurement
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		fmt.Fprintln(os.Stderr, "argo-eval: bad input:", err)
		os.Exit(2)
	}
	out := make([]verdict, 0, len(input))
	for _, m := range input {
		result, err := decode(m.Result)
		if err != nil {
			out = append(out, verdict{Phase: "Error", Error: err.Error()})
			continue
		}
		phase, err := evaluateResult(result, m.Success, m.Failure)
		v := verdict{Phase: phase}
		if err != nil {
			v.Error = err.Error()
		}
		out = append(out, v)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
}
