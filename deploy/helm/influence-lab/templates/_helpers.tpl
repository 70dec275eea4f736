{{/*
Names, labels, images, security contexts and the environment shared by the templates.
*/}}

{{/* The release's base name: the release name, with the chart's name added unless it is
already in it; at most 63 characters (DNS label). */}}
{{- define "inflab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component> (component passed as .component). */}}
{{- define "inflab.componentName" -}}
{{- printf "%s-%s" (include "inflab.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every pod of the release carries and selectors use (stable across upgrades). */}}
{{- define "inflab.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels. */}}
{{- define "inflab.labels" -}}
{{ include "inflab.selectorLabels" . }}
app.kubernetes.io/part-of: influence-lab
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The labels that pick out every pod of this release (NetworkPolicies). */}}
{{- define "inflab.releaseSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Pods that take part in Ray (workers, RayCluster head and workers): they reach each
other on Ray's ports. */}}
{{- define "inflab.rayPeerLabel" -}}
influence-lab/ray-peer: "true"
{{- end -}}

{{- define "inflab.image" -}}
{{- $img := index .root.Values.image .name -}}
{{- printf "%s:%s" $img.repository $img.tag -}}
{{- end -}}

{{/* The pod security context of every pod (RayCluster's included). */}}
{{- define "inflab.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container security context of every container. */}}
{{- define "inflab.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* imagePullSecrets of a pod spec, at the given indent (.indent); nothing without any. */}}
{{- define "inflab.imagePullSecrets" -}}
{{- with .root.Values.image.pullSecrets }}
{{- printf "imagePullSecrets:" | nindent $.indent }}
{{- range . }}
{{- printf "- name: %s" . | nindent (int (add $.indent 2)) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The GCS address (host:port) of the Ray cluster the workers join: ray.address
(external) or the RayCluster's head service (kuberay); empty for local. The workers join
as Ray nodes without resources and drive it from there: Ray Client (ray://) cannot carry
the streaming tasks the stages run. */}}
{{- define "inflab.rayAddress" -}}
{{- if eq .Values.ray.mode "external" -}}
{{- required "ray.address is required when ray.mode is external (the cluster's GCS address, e.g. ray-head.ray.svc:6379)" .Values.ray.address -}}
{{- else if eq .Values.ray.mode "kuberay" -}}
{{- printf "%s-head-svc:6379" (include "inflab.componentName" (dict "root" . "component" "ray")) -}}
{{- end -}}
{{- end -}}

{{/* host and port of a URL (nats.url, nats.monitoringUrl, objectStore.endpoint), with
the scheme's default port when the URL has none. */}}
{{- define "inflab.urlPort" -}}
{{- $u := urlParse .url -}}
{{- $parts := splitList ":" $u.host -}}
{{- if gt (len $parts) 1 -}}{{ last $parts }}{{- else -}}{{ .default }}{{- end -}}
{{- end -}}

{{/* nats.monitoringUrl as a URL: host:port alone means http://host:port. */}}
{{- define "inflab.monitoringUrl" -}}
{{- $u := .Values.nats.monitoringUrl -}}
{{- if contains "://" $u -}}{{ $u }}{{- else -}}{{ printf "http://%s" $u }}{{- end -}}
{{- end -}}

{{/* The object store's settings: URL, endpoint, region, and credentials from the Secret. */}}
{{- define "inflab.env.objectStore" -}}
- name: INFLAB_OBJECT_STORE_URL
  value: {{ .Values.objectStore.url | quote }}
{{- with .Values.objectStore.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- if hasPrefix "http://" . }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- with .Values.objectStore.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: access-key-id}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: secret-access-key}
{{- end }}
{{- end -}}

{{/* NATS for one role (.role): URL, prefixes, the role's user and its password. */}}
{{- define "inflab.env.nats" -}}
- name: INFLAB_NATS_URL
  value: {{ .root.Values.nats.url | quote }}
- name: INFLAB_STREAM_PREFIX
  value: {{ .root.Values.nats.streamPrefix | quote }}
- name: INFLAB_SUBJECT_PREFIX
  value: {{ .root.Values.nats.subjectPrefix | quote }}
{{- with .root.Values.nats.existingSecret }}
- name: INFLAB_NATS_USER
  value: {{ $.role | quote }}
- name: INFLAB_NATS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ printf "%s-password" $.role }}}
{{- end }}
{{- end -}}

{{/* The database URL, from its Secret. */}}
{{- define "inflab.env.database" -}}
- name: INFLAB_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret }}, key: url}
{{- end -}}

{{/* Settings shared by every process that loads models (workers and Ray nodes). */}}
{{- define "inflab.env.models" -}}
- name: INFLAB_MODEL_CACHE_DIR
  value: /models
- name: HF_HOME
  value: /tmp/huggingface
- name: INFLAB_MODEL_ALLOW_LIST
  value: {{ .Values.runs.modelAllowList | quote }}
{{- end -}}

{{/* Writable paths under a read-only root filesystem: /tmp (Python, Ray's session
folder, caches) and the models folder. */}}
{{- define "inflab.volumes.models" -}}
- name: tmp
  emptyDir: {}
- name: models
{{- if .Values.models.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.models.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "inflab.volumeMounts.models" -}}
- name: tmp
  mountPath: /tmp
- name: models
  mountPath: /models
{{- end -}}

{{/* GPU scheduling for a pod: the nodeSelector and tolerations of gpu.* */}}
{{- define "inflab.gpuScheduling" -}}
{{- with .Values.gpu.nodeSelector }}
nodeSelector:
  {{- range $key, $value := . }}
  {{ $key }}: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- with .Values.gpu.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Probes of a Ray node's container (.head: also the GCS). KubeRay's own default probes
run wget, which the workers' image does not ship, so the chart gives its own: the same
health endpoints, read with the image's Python. */}}
{{- define "inflab.rayProbes" -}}
{{- $urls := list "http://localhost:52365/api/local_raylet_healthz" -}}
{{- if .head }}{{- $urls = append $urls "http://localhost:8265/api/gcs_healthz" -}}{{- end -}}
{{- $check := printf "import sys, urllib.request as u; sys.exit(0 if all(b'success' in u.urlopen(x, timeout=5).read() for x in %s) else 1)" ($urls | toJson) -}}
readinessProbe:
  exec:
    command: ["python", "-c", {{ $check | quote }}]
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 10
  failureThreshold: 6
livenessProbe:
  exec:
    command: ["python", "-c", {{ $check | quote }}]
  initialDelaySeconds: 60
  periodSeconds: 15
  timeoutSeconds: 10
  failureThreshold: 10
{{- end -}}

