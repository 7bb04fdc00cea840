{{/* Chart name, at most 63 characters. */}}
{{- define "diffar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "diffar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "diffar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "diffar.labels" -}}
helm.sh/chart: {{ include "diffar.chart" . }}
{{ include "diffar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: diffar
{{- end -}}

{{/* Labels that select the operator pod. */}}
{{- define "diffar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "diffar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "diffar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "diffar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "diffar.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The operator's permissions: exactly the API calls of diffar.operator (kube.py, reconcile.py)
and of kopf for the handlers in handlers.py. tests/deploy/test_rbac.py records those calls and
compares them with these rules. Namespaced rules only; the cluster-scoped ones are in rbac.yaml.
*/}}
{{- define "diffar.namespacedRules" -}}
# The runs: kopf lists and watches them, reconcile reads them, kopf patches its finalizer and
# its progress annotations into them.
# A ScalingStudy creates its child runs.
- apiGroups: ["diffar.io"]
  resources: ["diffusionruns", "arruns"]
  verbs: ["get", "list", "watch", "create", "patch"]
# ScalingStudies: watched, read and patched (kopf) like the runs.
- apiGroups: ["diffar.io"]
  resources: ["scalingstudies"]
  verbs: ["get", "list", "watch", "patch"]
# The operator is the only writer of a run's and a study's status.
- apiGroups: ["diffar.io"]
  resources: ["diffusionruns/status", "arruns/status", "scalingstudies/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion: true, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only with this permission.
- apiGroups: ["diffar.io"]
  resources: ["diffusionruns/finalizers", "arruns/finalizers", "scalingstudies/finalizers"]
  verbs: ["update"]
# Training: created, read, watched (kopf event handlers), suspended/resumed by a merge patch;
# the chosen backend's kind only.
{{- if eq .Values.backend "trainjob" }}
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- else }}
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}
# Evaluation: likewise.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# <run>-config: train.json and eval.json; eval.json is patched when spec.evaluation changed
# before the evaluator starts.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# The evaluator pod's termination message (results), listed by the Job's job-name label. Only
# list: no get, watch, logs or exec. Cluster-wide mode grants it in every namespace (the Job's
# pod names are generated, so nothing narrower names them); operator.watchNamespaces confines
# it to those namespaces.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Events on the runs (the operator's and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
