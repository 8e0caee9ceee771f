{{/* The name part of object names. */}}
{{- define "cellule-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The objects' name: the release name when it contains the chart name (so
release `cellule-operator` gives the names of config/default), else
`<release>-<chart>`. Cluster-scoped objects carry it too, so that two
releases do not collide.
*/}}
{{- define "cellule-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cellule-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cellule-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cellule-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every object's labels (e2e/tests/packaging.rs ignores the last four
when it compares with config/default). */}}
{{- define "cellule-operator.labels" -}}
app.kubernetes.io/name: {{ include "cellule-operator.name" . }}
helm.sh/chart: {{ include "cellule-operator.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The leader-election Lease's name. */}}
{{- define "cellule-operator.leaseId" -}}
{{- default (include "cellule-operator.fullname" .) .Values.leaderElection.id }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag. */}}
{{- define "cellule-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount as an RBAC subject. */}}
{{- define "cellule-operator.subject" -}}
- kind: ServiceAccount
  name: {{ include "cellule-operator.fullname" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
