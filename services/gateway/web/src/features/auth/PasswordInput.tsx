import { Eye, EyeOff } from "lucide-react";
import { useState, type InputHTMLAttributes } from "react";

/** A password field with a show/hide toggle; its label comes from the surrounding Field. */
export function PasswordInput({ large = false, ...props }: InputHTMLAttributes<HTMLInputElement> & { large?: boolean }) {
  const [visible, setVisible] = useState(false);
  return (
    <div className="password-wrap">
      <input {...props} type={visible ? "text" : "password"} className={`input ${large ? "input-lg" : ""} ${props.className ?? ""}`} />
      <button
        type="button"
        className="icon-btn icon-btn-sm"
        aria-label={visible ? "Hide password" : "Show password"}
        aria-pressed={visible}
        onClick={() => setVisible((v) => !v)}
      >
        {visible ? <EyeOff /> : <Eye />}
      </button>
    </div>
  );
}
