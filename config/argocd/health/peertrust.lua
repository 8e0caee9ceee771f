-- Argo CD health of a cellule.ai PeerTrust: Suspended while its pool is
-- Paranoid (Suspended=True), Degraded when refused (Stalled) or downgraded
-- by reputation (Downgraded=True), Progressing while a level-3 handshake is
-- incomplete or not yet valid. Installed as
-- resource.customizations.health.cellule.ai_PeerTrust.
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local function holds(kind)
  local c = condition(kind)
  return c ~= nil and c.status == "True"
end
local function says(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end
local function level()
  if obj.status.effectiveTrustLevel ~= nil then
    return "effective level " .. tostring(obj.status.effectiveTrustLevel) .. "; "
  end
  return ""
end

if obj.status == nil or obj.status.observedGeneration == nil then
  return { status = "Progressing", message = "Waiting for the operator's first status" }
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  return { status = "Progressing", message = "Waiting for the operator to observe generation " ..
    tostring(obj.metadata.generation) .. " (status is of generation " .. tostring(obj.status.observedGeneration) .. ")" }
end
-- The peer's key refused, a missing Pool, a bad handshake at level 3, or a
-- reputation downgrade.
if holds("Stalled") then
  return { status = "Degraded", message = level() .. says(condition("Stalled")) }
end
if holds("Suspended") then
  return { status = "Suspended", message = level() .. says(condition("Suspended")) }
end
if holds("Downgraded") then
  return { status = "Degraded", message = level() .. says(condition("Downgraded")) }
end
if holds("Reconciling") then
  return { status = "Progressing", message = level() .. says(condition("Reconciling")) }
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = says(ready) }
end
if ready ~= nil then
  return { status = "Progressing", message = level() .. says(ready) }
end
return { status = "Progressing", message = "Waiting for the Ready condition" }
