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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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

{{/* registry/repository:tag, or registry/repository@digest (the digest
wins); no registry prefix when image.registry is empty. */}}
{{- define "secret-canary.image" -}}
{{- $img := .Values.image -}}
{{- $repo := $img.repository -}}
{{- with $img.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- if $img.digest -}}
{{ $repo }}@{{ $img.digest }}
{{- else -}}
{{ $repo }}:{{ $img.tag | default .Chart.AppVersion }}
{{- end -}}
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
{{- if .Values.secretStore.create }}
{{- default (printf "%s-vault" (include "secret-canary.fullname" .) | trunc 63 | trimSuffix "-") .Values.secretStore.name }}
{{- else }}
{{- required "secretStore.name is required when secretStore.create is false (the existing SecretStore or ClusterSecretStore to read from)" .Values.secretStore.name }}
{{- end }}
{{- end }}

{{/* The ESO API version: the value, else v1 when served, else v1beta1
when served, else v1 (ESO >= 0.17 serves only v1 by default). */}}
{{- define "secret-canary.esoApiVersion" -}}
{{- if .Values.externalSecrets.apiVersion -}}
{{ .Values.externalSecrets.apiVersion }}
{{- else if .Capabilities.APIVersions.Has "external-secrets.io/v1/ExternalSecret" -}}
external-secrets.io/v1
{{- else if .Capabilities.APIVersions.Has "external-secrets.io/v1beta1/ExternalSecret" -}}
external-secrets.io/v1beta1
{{- else -}}
external-secrets.io/v1
{{- end -}}
{{- end }}

{{/* Whether to render a Prometheus Operator object: enabled, and its API
served unless skipIfMissing is false. Call with (dict "root" $ "cfg"
.Values.serviceMonitor "api" "monitoring.coreos.com/v1/ServiceMonitor");
prints "true" or nothing. */}}
{{- define "secret-canary.renderMonitoring" -}}
{{- if and .cfg.enabled (or (not .cfg.skipIfMissing) (.root.Capabilities.APIVersions.Has .api)) -}}
true
{{- end -}}
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
{{- /* path_prefix: the prober refuses paths outside it (default `canary/`). */ -}}
{{- $prefix := trimSuffix "/" $root.Values.store.pathPrefix -}}
{{- $store := dict "address" $root.Values.store.address "mount" $root.Values.store.mount "path" (printf "%s/%s" $prefix $v.name) "path_prefix" $prefix "key" $root.Values.store.key "timeout" $root.Values.store.timeout "auth" $root.Values.store.auth -}}
{{- with $root.Values.store.namespace }}{{ $_ := set $store "namespace" . }}{{ end -}}
{{- with $root.Values.store.caBundle }}{{ $_ := set $store "ca_bundle" . }}{{ end -}}
{{- $canary := dict "selector" (include "secret-canary.canarySelectorString" (dict "root" $root "variant" $v)) "port" $root.Values.canary.port -}}
{{- if ne (default "direct" $root.Values.canary.access) "direct" }}{{ $_ := set $canary "access" $root.Values.canary.access }}{{ end -}}
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

{{/* Whether to drop fixed IDs from the securityContexts (OpenShift-style
UID assignment): prints "true" or nothing. */}}
{{- define "secret-canary.adaptSecurityContext" -}}
{{- $mode := .Values.adaptSecurityContext -}}
{{- if or (eq $mode "force") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) -}}
true
{{- end -}}
{{- end }}

{{/* The Pod securityContext of every Pod of the chart (values
podSecurityContext; restricted Pod Security by default). */}}
{{- define "secret-canary.podSecurityContext" -}}
{{- $sc := deepCopy .Values.podSecurityContext -}}
{{- if include "secret-canary.adaptSecurityContext" . -}}
{{- $sc = omit $sc "runAsUser" "runAsGroup" "fsGroup" -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end }}

{{- define "secret-canary.containerSecurityContext" -}}
{{- $sc := deepCopy .Values.containerSecurityContext -}}
{{- if include "secret-canary.adaptSecurityContext" . -}}
{{- $sc = omit $sc "runAsUser" "runAsGroup" -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end }}

{{/* A Go duration (`10s`, `1m30s`, `500ms`) in whole seconds, rounded up. */}}
{{- define "secret-canary.durationSeconds" -}}
{{- $ms := 0.0 -}}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h|d)" . -1 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" $part) $part -}}
{{- $factor := get (dict "ns" 0.000001 "us" 0.001 "µs" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 "d" 86400000.0) $unit -}}
{{- $ms = addf $ms (mulf $num $factor) -}}
{{- end -}}
{{- ceil (divf $ms 1000.0) | int -}}
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
{{- $smNs := default .Release.Namespace .Values.serviceMonitor.namespace -}}
{{- if and .Values.metrics.auth.enabled .Values.serviceMonitor.enabled (ne $smNs .Release.Namespace) -}}
{{- fail (printf "serviceMonitor.namespace is %s but metrics.auth is on: the Prometheus Operator reads the bearer token Secret from the ServiceMonitor's own namespace, and the token lives in %s; leave serviceMonitor.namespace empty" $smNs .Release.Namespace) -}}
{{- end -}}
{{- end }}
