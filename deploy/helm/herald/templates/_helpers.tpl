{{/*
Names and labels.
*/}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.fullname" -}}
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

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the `helm test` pod: deliberately not the selector labels, so the Service, the
PodDisruptionBudget and the NetworkPolicy never pick it up as a herald pod.
*/}}
{{- define "herald.testLabels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ include "herald.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: test
{{- end }}

{{/* Label that lets a pod reach herald when networkPolicy.allowExternal is false. */}}
{{- define "herald.clientLabel" -}}
{{ include "herald.fullname" . }}-client
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Paths inside the pod.
*/}}
{{- define "herald.configDir" -}}/etc/herald{{- end }}
{{- define "herald.configPath" -}}/etc/herald/herald.yaml{{- end }}
{{- define "herald.secretDir" -}}/etc/herald/secrets{{- end }}

{{/*
Secrets: the Secret herald reads (existingSecret, or the one the chart creates), and
whether the chart creates one.
*/}}
{{- define "herald.createSecret" -}}
{{- $s := .Values.secrets }}
{{- if and (not .Values.existingSecret) (or $s.publishTokens $s.jwtSecret $s.natsUser $s.natsPassword $s.natsToken $s.natsNkeySeed $s.files) -}}
true
{{- end }}
{{- end }}

{{- define "herald.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if include "herald.createSecret" . }}
{{- include "herald.fullname" . }}
{{- end }}
{{- end }}

{{/* Secret key -> environment variable. Keep in sync with values.yaml and README. */}}
{{- define "herald.secretEnvKeys" -}}
publish-tokens: HERALD__AUTH__PUBLISH_TOKENS
jwt-secret: HERALD__AUTH__JWT__SECRET
nats-user: HERALD__BUS__NATS__USER
nats-password: HERALD__BUS__NATS__PASSWORD
nats-token: HERALD__BUS__NATS__TOKEN
nats-nkey-seed: HERALD__BUS__NATS__NKEY_SEED
{{- end }}

{{/*
The drain budget. Exit margin: after the last session is closed herald still flushes
traces and stops its listeners.
*/}}
{{- define "herald.exitMarginSeconds" -}}5{{- end }}

{{- define "herald.drainSeconds" -}}
{{- $shutdown := .Values.config.shutdown | default dict }}
{{- if hasKey $shutdown "drain_seconds" }}
{{- $shutdown.drain_seconds | int }}
{{- else }}
{{- 10 }}
{{- end }}
{{- end }}

{{- define "herald.minGracePeriodSeconds" -}}
{{- add (.Values.preStopSleepSeconds | int) (include "herald.drainSeconds" . | int) (include "herald.exitMarginSeconds" . | int) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: computed when unset; a value that cannot cover preStop +
drain + exit fails the render, because Kubernetes would SIGKILL the pod mid-drain and
its clients would lose the close frame and reconnect all at once.
*/}}
{{- define "herald.terminationGracePeriodSeconds" -}}
{{- $min := include "herald.minGracePeriodSeconds" . | int }}
{{- $set := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- $min }}
{{- else if lt ($set | int) $min }}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short: it must be at least preStopSleepSeconds (%d) + config.shutdown.drain_seconds (%s) + %ss to exit = %d, or Kubernetes kills herald in the middle of its drain. Raise it, lower the drain, or leave it empty to have the chart compute it." ($set | int) (.Values.preStopSleepSeconds | int) (include "herald.drainSeconds" .) (include "herald.exitMarginSeconds" .) $min) }}
{{- else }}
{{- $set | int }}
{{- end }}
{{- end }}

{{/* NATS URLs as a list (nats.url is comma-separated). */}}
{{- define "herald.natsUrls" -}}
{{- $urls := list }}
{{- range (splitList "," (.Values.nats.url | default "")) }}
{{- $u := trim . }}
{{- if $u }}
{{- $urls = append $urls $u }}
{{- end }}
{{- end }}
{{- toJson $urls }}
{{- end }}

{{/* Distinct TCP ports of the NATS URLs (4222 when a URL names none), for egress. */}}
{{- define "herald.natsPorts" -}}
{{- $ports := list }}
{{- range (include "herald.natsUrls" . | fromJsonArray) }}
{{- $port := regexFind ":[0-9]+$" (urlParse .).host | trimPrefix ":" }}
{{- $ports = append $ports (($port | default "4222") | int) }}
{{- end }}
{{- toJson ($ports | uniq) }}
{{- end }}

{{/* Port of the OTLP endpoint, for egress: the URL's own, else the scheme's (80/443). */}}
{{- define "herald.otlpPort" -}}
{{- $url := urlParse .Values.otel.endpoint }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" }}
{{- if $port }}
{{- $port }}
{{- else if eq $url.scheme "https" }}
{{- 443 }}
{{- else }}
{{- 80 }}
{{- end }}
{{- end }}

{{- define "herald.trustProxy" -}}
{{- $server := .Values.config.server | default dict }}
{{- if kindIs "bool" $server.trust_proxy }}
{{- $server.trust_proxy }}
{{- else }}
{{- .Values.ingress.enabled }}
{{- end }}
{{- end }}

{{/*
Refuse values that would leak a secret into the ConfigMap or that cannot work. The
schema catches types and typos; these are the rules it cannot express clearly.
*/}}
{{- define "herald.validate" -}}
{{- $cfg := .Values.config }}
{{- $auth := $cfg.auth | default dict }}
{{- $jwt := $auth.jwt | default dict }}
{{- $static := $auth.static | default dict }}
{{- $bus := $cfg.bus | default dict }}
{{- $nats := $bus.nats | default dict }}
{{- $hint := "it would be written into a ConfigMap. Put it in the Secret named by existingSecret (or in secrets.*) instead" }}
{{- if $auth.publish_tokens }}
{{- fail (printf "config.auth.publish_tokens must not be set: %s (key publish-tokens, comma-separated)." $hint) }}
{{- end }}
{{- if $jwt.secret }}
{{- fail (printf "config.auth.jwt.secret must not be set: %s (key jwt-secret)." $hint) }}
{{- end }}
{{- range $key := list "password" "token" "nkey_seed" }}
{{- if get $nats $key }}
{{- fail (printf "config.bus.nats.%s must not be set: %s (key nats-%s)." $key $hint (replace "_" "-" $key)) }}
{{- end }}
{{- end }}
{{- if or $static.aliases $static.tokens }}
{{- fail (printf "config.auth.static.aliases/tokens must not be set: %s, as a static credentials file (e.g. key static-auth.toml) referenced by config.auth.static.file: %s/static-auth.toml." $hint (include "herald.secretDir" .)) }}
{{- end }}
{{- if hasKey $nats "urls" }}
{{- fail "config.bus.nats.urls is set by the chart from nats.url (comma-separated); set nats.url instead." }}
{{- end }}
{{- $server := $cfg.server | default dict }}
{{- if or (hasKey $server "listen") (hasKey $server "metrics_listen") }}
{{- fail "config.server.listen / metrics_listen are set by the chart from containerPorts.http / containerPorts.metrics; set those instead." }}
{{- end }}
{{- if and (eq ($bus.kind | default "") "nats") (eq (include "herald.natsUrls" . | fromJsonArray | len) 0) }}
{{- fail "nats.url is required when config.bus.kind is \"nats\" (e.g. nats://nats.nats.svc:4222)." }}
{{- end }}
{{- if and (eq ($bus.kind | default "") "memory") (or .Values.autoscaling.enabled (gt (.Values.replicaCount | int) 1)) }}
{{- fail (printf "config.bus.kind \"memory\" keeps events inside one pod, so clients on the other pods would miss them: use replicaCount: 1 without autoscaling, or config.bus.kind: nats (replicaCount is %d, autoscaling.enabled is %t)." (.Values.replicaCount | int) .Values.autoscaling.enabled) }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "otel.endpoint is required when otel.enabled is true (e.g. http://otel-collector.observability.svc:4317)." }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if eq .name "HERALD__SHUTDOWN__DRAIN_SECONDS" }}
{{- fail "set config.shutdown.drain_seconds rather than HERALD__SHUTDOWN__DRAIN_SECONDS in extraEnv: the chart sizes terminationGracePeriodSeconds from it." }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (.Values.autoscaling.maxReplicas | int) (.Values.autoscaling.minReplicas | int)) }}
{{- fail (printf "autoscaling.maxReplicas (%d) must be >= autoscaling.minReplicas (%d)." (.Values.autoscaling.maxReplicas | int) (.Values.autoscaling.minReplicas | int)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.sessions.enabled) }}
{{- fail "autoscaling.enabled needs a metric: set autoscaling.targetCPUUtilizationPercentage or enable autoscaling.sessions." }}
{{- end }}
{{- end }}

{{/*
The herald config file: .Values.config plus what the chart owns (listeners, NATS URLs,
the automatic trust_proxy), with the embedded demo credentials explicitly emptied so a
production pod can never fall back to them. Secrets arrive as HERALD__… variables.
*/}}
{{- define "herald.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $server := $cfg.server | default dict }}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (.Values.containerPorts.http | int)) }}
{{- $_ = set $server "metrics_listen" (printf "0.0.0.0:%d" (.Values.containerPorts.metrics | int)) }}
{{- $_ = set $server "trust_proxy" (eq (include "herald.trustProxy" .) "true") }}
{{- $_ = set $cfg "server" $server }}
{{- $bus := $cfg.bus | default dict }}
{{- $nats := $bus.nats | default dict }}
{{- $urls := include "herald.natsUrls" . | fromJsonArray }}
{{- if $urls }}
{{- $_ = set $nats "urls" $urls }}
{{- end }}
{{- $_ = set $bus "nats" $nats }}
{{- $_ = set $cfg "bus" $bus }}
{{- $auth := $cfg.auth | default dict }}
{{- $_ = set $auth "publish_tokens" list }}
{{- $static := $auth.static | default dict }}
{{- $_ = set $static "aliases" list }}
{{- $_ = set $static "tokens" list }}
{{- $_ = set $auth "static" $static }}
{{- $jwt := $auth.jwt | default dict }}
{{- $_ = set $jwt "secret" "" }}
{{- $_ = set $auth "jwt" $jwt }}
{{- $_ = set $cfg "auth" $auth }}
{{- toYaml $cfg }}
{{- end }}
