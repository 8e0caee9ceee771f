// Command argocd-health assesses the health of Kubernetes objects with Argo
// CD's own code, exactly as `argocd admin settings resource-overrides health`
// does: the resource customizations are read from an argocd-cm ConfigMap by
// Argo CD's settings manager (util/settings, over a fake clientset holding
// that ConfigMap), and each object goes through gitops-engine's
// health.GetResourceHealth with Argo CD's Lua overrides (util/lua).
//
// Usage: argocd-health -argocd-cm ARGOCD_CM.yaml OBJECTS.yaml...
//
// OBJECTS files hold YAML or JSON documents; a List (kind List or *List) is
// expanded into its items. For each object one JSON line is printed:
// {"kind","namespace","name","status","message"} and, when Argo CD reports
// an error, "error"; "status" is empty when no health check applies. The
// exit status is 1 if any object's assessment failed.
//
// It is built by e2e/scripts/build-tools.sh in a wrapper module that repeats
// the replace lines of the argo-cd go.mod (a dependency's replace lines are
// ignored), at the version pinned in e2e/versions.env.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/argoproj/argo-cd/gitops-engine/pkg/health"
	log "github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/argoproj/argo-cd/v3/common"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
)

type result struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	Status     string `json:"status"`
	Message    string `json:"message"`
	Error      string `json:"error,omitempty"`
}

// The same metadata `argocd admin settings` puts on a local argocd-cm.
func settingsMeta(obj metav1.Object) {
	obj.SetNamespace("default")
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels["app.kubernetes.io/part-of"] = "argocd"
	obj.SetLabels(labels)
}

func readObjects(path string) ([]unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []unstructured.Unstructured
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if doc == nil {
			continue
		}
		obj := unstructured.Unstructured{Object: doc}
		if obj.IsList() {
			if err := obj.EachListItem(func(o runtime.Object) error {
				out = append(out, *o.(*unstructured.Unstructured))
				return nil
			}); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			continue
		}
		out = append(out, obj)
	}
}

func main() {
	cmPath := flag.String("argocd-cm", "", "path to an argocd-cm ConfigMap (YAML) holding the resource customizations")
	flag.Parse()
	if *cmPath == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health -argocd-cm ARGOCD_CM.yaml OBJECTS.yaml...")
		os.Exit(2)
	}
	log.SetLevel(log.WarnLevel)
	log.SetOutput(os.Stderr)

	data, err := os.ReadFile(*cmPath)
	if err != nil {
		fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(data, &cm); err != nil {
		fatal(fmt.Errorf("%s: %w", *cmPath, err))
	}
	if cm.Name != common.ArgoCDConfigMapName {
		fatal(fmt.Errorf("%s: a ConfigMap named %q, not %q", *cmPath, common.ArgoCDConfigMapName, cm.Name))
	}
	settingsMeta(&cm)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: common.ArgoCDSecretName},
		Data: map[string][]byte{
			"admin.password":   []byte("test"),
			"server.secretkey": []byte("test"),
		},
	}
	settingsMeta(secret)
	ctx := context.Background()
	mgr := settings.NewSettingsManager(ctx, fake.NewClientset(secret, &cm), "default")
	if err := mgr.ResyncInformers(); err != nil {
		fatal(err)
	}
	overrides, err := mgr.GetResourceOverrides()
	if err != nil {
		fatal(fmt.Errorf("argocd-cm: %w", err))
	}

	failed := false
	enc := json.NewEncoder(os.Stdout)
	for _, path := range flag.Args() {
		objs, err := readObjects(path)
		if err != nil {
			fatal(err)
		}
		for i := range objs {
			obj := &objs[i]
			r := result{APIVersion: obj.GetAPIVersion(), Kind: obj.GetKind(), Namespace: obj.GetNamespace(), Name: obj.GetName()}
			h, err := health.GetResourceHealth(obj, lua.ResourceHealthOverrides(overrides))
			if err != nil {
				r.Error = err.Error()
				failed = true
			}
			if h != nil {
				r.Status = string(h.Status)
				r.Message = h.Message
			}
			if err := enc.Encode(r); err != nil {
				fatal(err)
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "argocd-health:", strings.TrimSpace(err.Error()))
	os.Exit(2)
}
