{{/* The chart's name, and the release's full name (both at most 63 characters). */}}
{{- define "taskraft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskraft-operator.fullname" -}}
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

{{- define "taskraft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskraft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskraft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "taskraft-operator.labels" -}}
helm.sh/chart: {{ include "taskraft-operator.chart" . }}
{{ include "taskraft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: taskraft
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "taskraft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "taskraft-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "taskraft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
What the operator does in a namespace it watches (a ClusterRole's rules in cluster-wide mode,
each Role's in namespaced mode); operator/taskraft_operator/handlers.py lists the calls, and
tests/operator/test_chart.py holds the same table: change the three together.
- QueueClusters: kopf lists, watches and patches them (its annotations and finalizer), the
  handlers read them and patch their status; owner references with blockOwnerDeletion need
  update on finalizers (where OwnerReferencesPermissionEnforcement is on).
- The objects the planner builds (operator/taskraft_operator/planner.py): read, created, then
  server-side applied (the StatefulSet also scaled); never deleted (owner references let the
  garbage collector do it), never listed or watched.
- Pods: listed, and deleted one at a time for a roll or a recovery; PVCs: listed, and deleted
  after a scale-down when pvcRetention.whenScaled is Delete.
- Events: posted by kopf and the handlers.
*/}}
{{- define "taskraft-operator.namespacedRules" -}}
- apiGroups: ["taskraft.io"]
  resources: ["queueclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["taskraft.io"]
  resources: ["queueclusters/status"]
  verbs: ["patch"]
- apiGroups: ["taskraft.io"]
  resources: ["queueclusters/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["list", "delete"]
# The credentials Secret it generates once per QueueCluster, and the TLS Secret of spec.tls:
# read by name and created, never listed, watched, changed or deleted.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
