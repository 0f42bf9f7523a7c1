{{/* Names, labels and the prober config. */}}

{{- define "secret-canary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "secret-canary.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "secret-canary.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "secret-canary.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "secret-canary.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "secret-canary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector of the prober Pods (Service, NetworkPolicy). */}}
{{- define "secret-canary.proberSelector" -}}
app.kubernetes.io/name: {{ include "secret-canary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: prober
{{- end }}

{{/* Pods that may reach the canaries and leave through the prober's
egress policy: the prober and the `helm test` Pod. */}}
{{- define "secret-canary.proberNetworkLabel" -}}
secret-canary.io/network: prober-{{ .Release.Name }}
{{- end }}

{{- define "secret-canary.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "secret-canary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "secret-canary.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "secret-canary.canaryServiceAccountName" -}}
{{- if .Values.canary.serviceAccount.create }}
{{- default (printf "%s-canary" (include "secret-canary.fullname" .) | trunc 63 | trimSuffix "-") .Values.canary.serviceAccount.name }}
{{- else }}
{{- required "canary.serviceAccount.name is required when canary.serviceAccount.create is false" .Values.canary.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "secret-canary.canaryNamespace" -}}
{{- default .Release.Namespace .Values.canary.namespace }}
{{- end }}

{{- define "secret-canary.secretStoreName" -}}
{{- default (printf "%s-vault" (include "secret-canary.fullname" .) | trunc 63 | trimSuffix "-") .Values.secretStore.name }}
{{- end }}

{{/* Labels of one variant's canary Pods; the probe's selector is built
from the same keys. Call with (dict "root" $ "variant" $v). */}}
{{- define "secret-canary.canarySelector" -}}
app.kubernetes.io/name: {{ include "secret-canary.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: canary
secret-canary.io/probe: {{ .variant.name }}
{{- end }}

{{- define "secret-canary.canarySelectorString" -}}
{{- $parts := list -}}
{{- range $k, $v := (include "secret-canary.canarySelector" . | fromYaml) -}}
{{- $parts = append $parts (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end }}

{{/* The enabled variants, as a list of dicts with their kind. */}}
{{- define "secret-canary.variants" -}}
{{- $out := list -}}
{{- range $kind := list "esoEnv" "esoVolume" "bankVaults" -}}
{{- $v := index $.Values.variants $kind -}}
{{- if $v.enabled -}}
{{- $out = append $out (merge (dict "kind" $kind) $v) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "variants" $out) -}}
{{- end }}

{{/* The prober's config file (src/config.rs): one probe per enabled
variant, then extraProbes. */}}
{{- define "secret-canary.config" -}}
{{- $root := . -}}
{{- $probes := list -}}
{{- $ns := include "secret-canary.canaryNamespace" . -}}
{{- range $v := (include "secret-canary.variants" . | fromYaml).variants -}}
{{- $store := dict "address" $root.Values.store.address "mount" $root.Values.store.mount "path" (printf "%s/%s" $root.Values.store.pathPrefix $v.name) "key" $root.Values.store.key "timeout" $root.Values.store.timeout "auth" $root.Values.store.auth -}}
{{- with $root.Values.store.namespace }}{{ $_ := set $store "namespace" . }}{{ end -}}
{{- with $root.Values.store.caBundle }}{{ $_ := set $store "ca_bundle" . }}{{ end -}}
{{- $canary := dict "selector" (include "secret-canary.canarySelectorString" (dict "root" $root "variant" $v)) "port" $root.Values.canary.port -}}
{{- $chain := dict "namespace" $ns "canary" $canary -}}
{{- if eq $v.kind "esoEnv" -}}
{{- $_ := set $chain "external_secret" $v.name -}}
{{- $_ := set $chain "secret" (dict "name" $v.name "key" $root.Values.store.key) -}}
{{- $_ := set $chain "rollout" (dict "deployment" $v.name "trigger" "reloader") -}}
{{- $_ := set $canary "source" "env" -}}
{{- if $v.forceSync }}{{ $_ := set $chain "force_sync" true }}{{ end -}}
{{- else if eq $v.kind "esoVolume" -}}
{{- $_ := set $chain "external_secret" $v.name -}}
{{- $_ := set $chain "secret" (dict "name" $v.name "key" $root.Values.store.key) -}}
{{- $_ := set $canary "source" "file" -}}
{{- if $v.forceSync }}{{ $_ := set $chain "force_sync" true }}{{ end -}}
{{- else -}}
{{- $_ := set $chain "rollout" (dict "deployment" $v.name "trigger" "restart") -}}
{{- $_ := set $canary "source" "env" -}}
{{- end -}}
{{- $probe := dict "name" $v.name "interval" $v.interval "deadline" $v.deadline "store" $store "chain" $chain -}}
{{- with $v.slo }}{{ $_ := set $probe "slo" . }}{{ end -}}
{{- with $v.stageDeadlines }}{{ $_ := set $probe "stage_deadlines" . }}{{ end -}}
{{- $probes = append $probes $probe -}}
{{- end -}}
{{- $probes = concat $probes .Values.extraProbes -}}
{{- if not $probes -}}
{{- fail "no probe: enable a variant (variants.*.enabled) or add extraProbes" -}}
{{- end -}}
{{- toYaml (dict "kubernetes" (dict "request_timeout" .Values.prober.requestTimeout) "probes" $probes) -}}
{{- end }}

{{/* Restricted Pod Security for every container of the chart. */}}
{{- define "secret-canary.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "secret-canary.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The leader election Lease's name. */}}
{{- define "secret-canary.leaseName" -}}
{{- default (include "secret-canary.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The Secret holding the bearer token of /metrics and /probes. */}}
{{- define "secret-canary.metricsTokenSecret" -}}
{{- default (printf "%s-metrics-token" (include "secret-canary.fullname" .) | trunc 63 | trimSuffix "-") .Values.metrics.auth.existingSecret }}
{{- end }}

{{/* Where the prober reads that token. */}}
{{- define "secret-canary.metricsTokenPath" -}}
/var/run/secrets/secret-canary/metrics/token
{{- end }}

{{/* Refuse value combinations the prober cannot run safely. Included by
the prober Deployment, so every install and upgrade checks them. */}}
{{- define "secret-canary.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: replicas without leader election would all probe at once and race on the same store paths; set leaderElection.enabled=true or replicaCount=1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- end }}
